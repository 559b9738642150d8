"""pycocotools as the reference for our evaluator (tests and benchmarks), and random COCO-like cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models_app.evaluator import Boxes


def coco_dicts(gt: Boxes, n_images: int, n_classes: int) -> dict:
    assert gt.area is not None
    return {
        "images": [{"id": i + 1, "width": 1000, "height": 1000} for i in range(n_images)],
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(n_classes)],
        "annotations": [
            {
                "id": j + 1,
                "image_id": int(gt.image[j]) + 1,
                "category_id": int(gt.label[j]) + 1,
                "bbox": [float(v) for v in gt.xywh[j]],
                "area": float(gt.area[j]),
                "iscrowd": 0,
            }
            for j in range(len(gt))
        ],
    }


def coco_results(dt: Boxes) -> list[dict]:
    assert dt.score is not None
    return [
        {
            "image_id": int(dt.image[j]) + 1,
            "category_id": int(dt.label[j]) + 1,
            "bbox": [float(v) for v in dt.xywh[j]],
            "score": float(dt.score[j]),
        }
        for j in range(len(dt))
    ]


def reference(
    gt: Boxes,
    dt: Boxes,
    n_images: int,
    n_classes: int,
    ious: list[float] | None = None,
    max_dets: tuple[int, ...] | None = None,
) -> COCOeval:
    """pycocotools' COCOeval run to the end (evaluate, accumulate, summarize), quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = coco_dicts(gt, n_images, n_classes)
        coco_gt.createIndex()
        results = coco_results(dt)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes refuses an empty list
            coco_dt = COCO()
            coco_dt.dataset = {**coco_dicts(gt, n_images, n_classes), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if ious is not None:
            ev.params.iouThrs = np.asarray(ious, dtype=float)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def random_case(
    rng: np.random.Generator,
    *,
    n_images: int,
    n_classes: int,
    gt_per_image: float,
    dt_per_image: float,
    ties: bool = False,
    unknown_classes: bool = False,
) -> tuple[Boxes, Boxes]:
    """Ground truth anywhere in a 400x400 frame (sizes 1..150, so all area ranges occur); detections are partly
    jittered copies of ground truth (mostly with the right class), partly random; ``ties`` rounds scores to
    one decimal and boxes to whole pixels so that equal scores and equal IoUs occur."""
    gi = np.repeat(np.arange(n_images), rng.poisson(gt_per_image, n_images))
    di = np.repeat(np.arange(n_images), rng.poisson(dt_per_image, n_images))

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(1, 150, (n, 2))
        return np.concatenate([xy, wh], axis=1)

    gb, db = boxes(len(gi)), boxes(len(di))
    gl = rng.integers(0, n_classes, len(gi))
    dl = rng.integers(0, n_classes + (1 if unknown_classes else 0), len(di))
    if len(gi) and len(di):
        src = rng.integers(0, len(gi), len(di))
        copy = rng.random(len(di)) < 0.6
        db[copy] = gb[src[copy]] + rng.normal(0, 6, (int(copy.sum()), 4))
        db[:, 2:] = np.abs(db[:, 2:]) + 0.5
        di[copy] = gi[src[copy]]
        same_class = copy & (rng.random(len(di)) < 0.8)
        dl[same_class] = gl[src[same_class]]
    scores = rng.random(len(di))
    if ties:
        gb, db, scores = np.round(gb), np.round(db), np.round(scores, 1)
        db[:, 2:] = np.maximum(db[:, 2:], 1)
    return Boxes(gi, gl, gb), Boxes(di, dl, db, scores)
