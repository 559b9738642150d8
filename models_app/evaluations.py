"""Evaluations: a ground-truth dataset version against one or more of its prediction sets, computed by our
evaluator and stored, so that pages read results and never recompute them.

The classes evaluated are those of the version's ground truth (plus any asked for); predictions of other
classes are ignored and counted. Boxes are read in image order (membership id), as COCO reads image ids.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction
from django.utils.translation import gettext as _

from core.errors import Invalid
from core.models import User
from datasets.models import Box, DatasetAsset, DatasetVersion, LabelClass, PredictionSet
from models_app import evaluator
from models_app.models import Evaluation, ModelStage, Task
from models_app.services import task_begin, task_create, task_finish, task_progress

logger = logging.getLogger(__name__)
COCO = "0.5:0.95"
BOOTSTRAP_ROUNDS = 200
MAX_SETS = 6


@dataclass
class Loaded:
    """A version's boxes as evaluator arrays, with the ids to map results back."""

    asset_ids: np.ndarray  # image index -> asset id
    class_ids: list[int]  # class index -> LabelClass id
    class_names: list[str]
    gt: evaluator.Boxes
    gt_box_ids: np.ndarray


def parse_ious(value: str | list[float] | float) -> list[float]:
    """ "0.5:0.95" (COCO's ten), one threshold, or a list; each in (0, 1)."""
    if isinstance(value, str):
        text = value.strip()
        if text in (COCO, "coco", ""):
            return [round(float(v), 2) for v in evaluator.COCO_IOUS]
        try:
            values = [float(v) for v in text.replace(";", ",").split(",")]
        except ValueError:
            raise Invalid(_("IoU thresholds must be numbers, or 0.5:0.95."), code="invalid_iou") from None
    elif isinstance(value, int | float):
        values = [float(value)]
    else:
        values = [float(v) for v in value]
    if not values or len(values) > 20 or any(not 0 < v < 1 for v in values):
        raise Invalid(_("IoU thresholds must be between 0 and 1."), code="invalid_iou")
    return sorted(set(values))


def parse_max_dets(value: list[int] | None) -> list[int]:
    values = [1, 10, 100] if not value else [int(v) for v in value]
    if len(values) != 3 or any(v < 1 or v > 10000 for v in values) or values != sorted(values):
        raise Invalid(_("maxDets are three increasing numbers, e.g. 1, 10, 100."), code="invalid_max_dets")
    return values


def load_version(
    version: DatasetVersion, extra_class_ids: list[int] | None = None, only_assets: list[int] | None = None
) -> Loaded:
    """The version's ground truth (of ``only_assets`` when given; the classes are still the whole version's)."""
    items = DatasetAsset.objects.filter(version=version)
    gt_rows = Box.objects.filter(version=version, prediction_set__isnull=True)
    if only_assets is not None:
        items = items.filter(asset_id__in=only_assets)
        gt_rows = gt_rows.filter(asset_id__in=only_assets)
    asset_ids = np.array(items.order_by("id").values_list("asset_id", flat=True), dtype=np.int64)
    rows = list(gt_rows.order_by("id").values_list("id", "asset_id", "label_id", "x1", "y1", "x2", "y2"))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 7)
    if only_assets is None:
        wanted = set(arr[:, 2].astype(np.int64).tolist())
    else:
        all_gt = Box.objects.filter(version=version, prediction_set__isnull=True)
        wanted = set(all_gt.values_list("label_id", flat=True).distinct())
    wanted |= set(extra_class_ids or [])
    names = dict(LabelClass.objects.filter(pk__in=wanted).values_list("id", "name"))
    class_ids = sorted(wanted, key=lambda c: (names[c].lower(), c))  # shown by name
    gt = _boxes(arr[:, 1:], asset_ids, class_ids, None)
    return Loaded(asset_ids, class_ids, [names[c] for c in class_ids], gt, arr[:, 0].astype(np.int64))


def _boxes(arr: np.ndarray, asset_ids: np.ndarray, class_ids: list[int], scores: np.ndarray | None) -> evaluator.Boxes:
    """Rows (asset id, label id, x1, y1, x2, y2) to evaluator boxes; labels outside ``class_ids`` become -1."""
    order = np.argsort(asset_ids, kind="stable")
    pos = np.searchsorted(asset_ids, arr[:, 0].astype(np.int64), sorter=order)
    image = order[np.minimum(pos, len(order) - 1)] if len(order) else np.zeros(len(arr), dtype=np.int64)
    lookup = {c: i for i, c in enumerate(class_ids)}
    label = np.array([lookup.get(int(c), -1) for c in arr[:, 1]], dtype=np.int64)
    if len(arr) and len(asset_ids):  # a box of an image outside the set read is ignored
        label = np.where(asset_ids[image] == arr[:, 0].astype(np.int64), label, -1)
    xywh = np.stack([arr[:, 2], arr[:, 3], arr[:, 4] - arr[:, 2], arr[:, 5] - arr[:, 3]], axis=1)
    return evaluator.Boxes(image, label, xywh, scores)


def load_predictions(
    loaded: Loaded, prediction_set: PredictionSet, score_threshold: float
) -> tuple[evaluator.Boxes, np.ndarray]:
    boxes = Box.objects.filter(prediction_set=prediction_set, score__gte=score_threshold)
    if len(loaded.asset_ids) < 1000:  # one image or a page of them: read only theirs
        boxes = boxes.filter(asset_id__in=loaded.asset_ids.tolist())
    rows = list(boxes.order_by("id").values_list("id", "asset_id", "label_id", "x1", "y1", "x2", "y2", "score"))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 8)
    return _boxes(arr[:, 1:7], loaded.asset_ids, loaded.class_ids, arr[:, 7]), arr[:, 0].astype(np.int64)


def compute(
    version: DatasetVersion,
    prediction_sets: list[PredictionSet],
    *,
    ious: list[float],
    score_threshold: float = 0.0,
    max_dets: list[int] | None = None,
    bootstrap_rounds: int = BOOTSTRAP_ROUNDS,
    progress: Any = None,
) -> dict[str, Any]:
    """Everything the diagnosis page shows, as plain JSON."""
    started = time.perf_counter()
    max_dets = parse_max_dets(max_dets)
    loaded = load_version(version)
    n_images, n_classes = len(loaded.asset_ids), len(loaded.class_ids)
    iou_arr = np.asarray(ious, dtype=np.float64)
    dts, matchings, sets = [], [], []
    for i, prediction_set in enumerate(prediction_sets):
        dt, _ids = load_predictions(loaded, prediction_set, score_threshold)
        ev = evaluator.evaluate(loaded.gt, dt, n_classes=n_classes, ious=iou_arr, max_dets=tuple(max_dets))
        dts.append(dt)
        matchings.append(ev.matching)
        sets.append(_set_result(prediction_set, loaded, dt, ev))
        if progress:
            progress((i + 1) / (len(prediction_sets) + 1))
    comparison: list[dict[str, Any]] = []
    if len(sets) > 1 and n_images:
        best = int(np.argmax([s["stats"]["AP"] or 0.0 for s in sets]))
        samples = evaluator.bootstrap_ap(
            loaded.gt,
            dts,
            matchings,
            n_images=n_images,
            n_classes=n_classes,
            max_det=max_dets[-1],
            rounds=bootstrap_rounds,
        )
        for j, s in enumerate(sets):
            if j == best:
                continue
            diff = samples[:, j] - samples[:, best]
            diff = diff[~np.isnan(diff)]
            low, high = np.percentile(diff, [2.5, 97.5]).tolist() if diff.size else [None, None]
            comparison.append(
                {
                    "set": s["id"],
                    "best": sets[best]["id"],
                    "diff": (s["stats"]["AP"] or 0.0) - (sets[best]["stats"]["AP"] or 0.0),
                    "low": low,
                    "high": high,
                    "significant": bool(high is not None and high < 0),
                }
            )
        for j, s in enumerate(sets):
            s["best"] = j == best
    return {
        "images": n_images,
        "gt_boxes": len(loaded.gt),
        "classes": loaded.class_names,
        "ious": [float(v) for v in ious],
        "score_threshold": score_threshold,
        "max_dets": max_dets,
        "sets": sets,
        "comparison": comparison,
        "bootstrap_rounds": bootstrap_rounds if len(sets) > 1 else 0,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) or value < 0 else round(float(value), 6)


def _set_result(
    prediction_set: PredictionSet, loaded: Loaded, dt: evaluator.Boxes, ev: evaluator.Evaluation
) -> dict[str, Any]:
    t0 = 0  # the first (lowest) IoU threshold: counts, precision/recall, PR curves and confusion use it
    ap = evaluator.class_ap(ev)
    ap_first = evaluator.class_ap(ev, float(ev.ious[t0]))
    n_classes = len(loaded.class_ids)
    kept = ev.matching.dt_kept
    matched = ev.matching.dt_gt[0, t0] >= 0
    tp = np.bincount(dt.label[kept][matched], minlength=n_classes)
    fp = np.bincount(dt.label[kept][~matched], minlength=n_classes)
    gts = np.bincount(loaded.gt.label, minlength=n_classes)
    fn = gts - np.bincount(loaded.gt.label[ev.matching.gt_matched[0, t0]], minlength=n_classes)
    per_class = []
    for k, name in enumerate(loaded.class_names):
        predicted = int(tp[k] + fp[k])
        per_class.append(
            {
                "name": name,
                "ap": _num(ap[k]),
                "ap_first": _num(ap_first[k]),
                "gt": int(gts[k]),
                "tp": int(tp[k]),
                "fp": int(fp[k]),
                "fn": int(fn[k]),
                "precision": round(float(tp[k]) / predicted, 6) if predicted else None,
                "recall": round(float(tp[k]) / int(gts[k]), 6) if gts[k] else None,
                # precision at recall 0, 0.05, ..., 1 (COCO's envelope), at the first IoU threshold
                "pr": [_num(v) for v in ev.precision[t0, ::5, k, 0, -1]],
            }
        )
    return {
        "id": prediction_set.pk,
        "name": prediction_set.name or prediction_set.get_source_display(),
        "model": prediction_set.model_info,
        "stats": {k: _num(v) for k, v in ev.stats.items()},
        "predictions": len(dt),
        "ignored_unknown_class": ev.unknown_class_detections,
        "per_class": per_class,
        "confusion": _confusion(loaded, dt, ev, t0),
    }


def _confusion(loaded: Loaded, dt: evaluator.Boxes, ev: evaluator.Evaluation, t0: int) -> list[list[int]]:
    """Rows: ground-truth class (last: background); columns: predicted class (last: missed).

    A matched prediction counts on the diagonal; an unmatched one counts against the class of the ground
    truth it overlaps most (IoU at or above the threshold, any class), or background; a missed ground truth
    counts in the last column."""
    n = len(loaded.class_ids)
    out = np.zeros((n + 1, n + 1), dtype=np.int64)
    kept = ev.matching.dt_kept
    labels = dt.label[kept]
    matched = ev.matching.dt_gt[0, t0] >= 0
    np.add.at(out, (labels[matched], labels[matched]), 1)
    fp = kept[~matched]
    if len(fp):
        gt = loaded.gt
        order = np.argsort(gt.image, kind="stable")
        starts = np.searchsorted(gt.image[order], dt.image[fp], "left")
        ends = np.searchsorted(gt.image[order], dt.image[fp], "right")
        counts = ends - starts
        which = np.repeat(np.arange(len(fp)), counts)
        gidx = (
            order[np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])]
            if counts.sum()
            else np.zeros(0, np.int64)
        )
        ious = (
            evaluator.iou_xywh(dt.xywh[fp][which][:, None, :], gt.xywh[gidx][:, None, :])[:, 0, 0]
            if len(gidx)
            else np.zeros(0)
        )
        best_iou = np.full(len(fp), -1.0)
        np.maximum.at(best_iou, which, ious)
        best_gt = np.full(len(fp), -1)
        hit = ious >= best_iou[which]
        best_gt[which[hit]] = gidx[hit]
        row = np.where(best_iou >= ev.ious[t0], gt.label[np.maximum(best_gt, 0)] if len(gt) else n, n)
        np.add.at(out, (row, dt.label[fp]), 1)
    missed = ~ev.matching.gt_matched[0, t0]
    np.add.at(out, (loaded.gt.label[missed], np.full(int(missed.sum()), n)), 1)
    return out.tolist()


OUTCOMES = ("TP", "FP", "FN", "MTP")


def box_outcomes(
    version: DatasetVersion,
    prediction_set: PredictionSet,
    *,
    iou: float,
    score_threshold: float,
    only_assets: list[int] | None = None,
) -> dict[int, str]:
    """Box id → "TP" / "FP" (predictions at or above the score threshold) or "MTP" / "FN" (ground truth), at one
    IoU threshold, every prediction considered (no per-image cap). Predictions of classes absent from the
    ground truth are left out (ignored), as in the evaluation. Matching is per image, so ``only_assets``
    (one image, a page) gives the same tags as the whole version."""
    return {
        box_id: tag for box_id, _asset, tag in _outcomes(version, prediction_set, iou, score_threshold, only_assets)
    }


def assets_with_outcome(
    version: DatasetVersion, prediction_set: PredictionSet, *, outcome: str, iou: float, score_threshold: float
) -> set[int]:
    """The images with at least one box of this outcome (e.g. every image with a missed object, FN)."""
    return {
        asset for _box, asset, tag in _outcomes(version, prediction_set, iou, score_threshold, None) if tag == outcome
    }


def _outcomes(
    version: DatasetVersion,
    prediction_set: PredictionSet,
    iou: float,
    score_threshold: float,
    only_assets: list[int] | None,
) -> list[tuple[int, int, str]]:
    loaded = load_version(version, only_assets=only_assets)
    if only_assets is not None and len(loaded.asset_ids) >= 1000:
        raise Invalid(_("Too many images at once."), code="too_many")
    dt, dt_ids = load_predictions(loaded, prediction_set, score_threshold)
    matching = evaluator.match(
        loaded.gt,
        dt,
        n_classes=len(loaded.class_ids),
        ious=np.array([iou]),
        area_ranges=[evaluator.AREAS["all"]],
        max_det=max(1, len(dt)),
    )
    out: list[tuple[int, int, str]] = []
    kept = matching.dt_kept
    dt_assets = loaded.asset_ids[dt.image[kept]].tolist() if len(loaded.asset_ids) else []
    for box_id, asset, gt_index in zip(dt_ids[kept].tolist(), dt_assets, matching.dt_gt[0, 0].tolist(), strict=True):
        out.append((box_id, asset, "TP" if gt_index >= 0 else "FP"))
    gt_assets = loaded.asset_ids[loaded.gt.image].tolist() if len(loaded.asset_ids) else []
    for box_id, asset, hit in zip(
        loaded.gt_box_ids.tolist(), gt_assets, matching.gt_matched[0, 0].tolist(), strict=True
    ):
        out.append((box_id, asset, "MTP" if hit else "FN"))
    return out


# --- stored evaluations -----------------------------------------------------------------------------------


def evaluation_create(
    *,
    user: User,
    version: DatasetVersion,
    prediction_sets: list[PredictionSet],
    ious: str | list[float] | float = COCO,
    score_threshold: float = 0.0,
    max_dets: list[int] | None = None,
    run_now: bool = False,
    stage_metrics: bool = False,
) -> Evaluation:
    """Validate and record an evaluation; computed now (API, small) or by a worker task with progress."""
    if version.state != DatasetVersion.State.READY:
        raise Invalid(_("Datasets must be ready."), code="dataset_not_ready")
    if not version.gt_box_count:
        raise Invalid(_("This dataset has no ground truth to evaluate against."), code="no_ground_truth")
    if not prediction_sets:
        raise Invalid(_("Choose at least one prediction set."), code="no_predictions")
    if len(prediction_sets) > MAX_SETS:
        raise Invalid(_("Compare at most %(n)d prediction sets at once.") % {"n": MAX_SETS}, code="too_many")
    if any(p.version_id != version.pk for p in prediction_sets):
        raise Invalid(_("Prediction sets must belong to the dataset evaluated."), code="invalid_prediction_set")
    if not 0 <= score_threshold <= 1:
        raise Invalid(_("The score threshold must be between 0 and 1."), code="invalid_score_threshold")
    parameters = {
        "ious": parse_ious(ious),
        "score_threshold": float(score_threshold),
        "max_dets": parse_max_dets(max_dets),
        "stage_metrics": stage_metrics,  # the platform's evaluation of a stage: its numbers go on the stage
    }
    project = version.group.project
    with transaction.atomic():
        task = task_create(
            user=user,
            kind=Task.Kind.EVALUATION,
            project=project if project.owner_id == user.pk else None,
            parameters=parameters,
        )
        evaluation = Evaluation.objects.create(user=user, version=version, task=task, parameters=parameters)
        evaluation.prediction_sets.set(prediction_sets)
        if not run_now:
            transaction.on_commit(functools.partial(_enqueue, task.pk))
    if run_now:
        evaluation_run(task.pk)
        evaluation.refresh_from_db()
    return evaluation


def _enqueue(task_id: int) -> None:
    from models_app.tasks import evaluation_task

    Task.objects.filter(pk=task_id, state=Task.State.PENDING).update(state=Task.State.QUEUED)
    evaluation_task.delay(task_id)


def evaluation_run(task_id: int) -> None:
    task = task_begin(task_id)
    if task is None:
        return
    evaluation = Evaluation.objects.select_related("version").get(task=task)
    sets = list(evaluation.prediction_sets.order_by("id"))
    params = evaluation.parameters
    try:
        result = compute(
            evaluation.version,
            sets,
            ious=params["ious"],
            score_threshold=params["score_threshold"],
            max_dets=params["max_dets"],
            progress=functools.partial(task_progress, task_id),
        )
    except Exception as exc:  # an error is shown on the task page; the worker lives on
        logger.exception("evaluation %s failed", evaluation.pk)
        task_finish(task_id, state=Task.State.ERROR, error_code="evaluation_failed", error_message=str(exc))
        return
    with transaction.atomic():
        Evaluation.objects.filter(pk=evaluation.pk).update(result=result)
        _stage_metrics(evaluation, sets, result)
        task_finish(task_id, state=Task.State.DONE)


def _stage_metrics(evaluation: Evaluation, sets: list[PredictionSet], result: dict[str, Any]) -> None:
    """Predictions made to evaluate a stage (after its training run): the platform's numbers go on the stage."""
    if not evaluation.parameters.get("stage_metrics"):  # a user's diagnosis, at their thresholds: not the stage's
        return
    for pset, outcome in zip(sets, result["sets"], strict=True):
        stage_id = (pset.model_info or {}).get("evaluate_stage")
        if not stage_id:
            continue
        metrics = {
            **outcome["stats"],
            "evaluation": evaluation.pk,
            "dataset_version": evaluation.version_id,
            "per_class": {row["name"]: row["ap"] for row in outcome["per_class"]},
        }
        ModelStage.objects.filter(pk=stage_id).update(metrics=metrics)
