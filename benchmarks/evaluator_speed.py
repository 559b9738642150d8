"""Our COCO evaluator against pycocotools (the baseline) and faster-coco-eval, on the same boxes, same run.

    .venv/bin/python benchmarks/evaluator_speed.py [--images 10000] [--boxes-per-image 6]

All 12 summary numbers are computed by each (evaluate + accumulate + summarize; building the COCO objects is
not timed for the references, building our arrays is not timed either). Prints the times, the ratios to
pycocotools, the largest difference from its numbers, and our peak traced memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models_app.evaluator import Boxes, evaluate  # noqa: E402
from tests.coco_reference import coco_dicts, coco_results, random_case, reference  # noqa: E402


def faster(gt: Boxes, dt: Boxes, n_images: int, n_classes: int) -> tuple[list[float], float]:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(coco_dicts(gt, n_images, n_classes))
        coco_dt = coco_gt.loadRes(coco_results(dt))
        ev = COCOeval_faster(coco_gt, coco_dt, "bbox")
        start = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        seconds = time.perf_counter() - start
    return list(ev.stats[:12]), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes-per-image", type=float, default=6.0)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gt, dt = random_case(
        rng,
        n_images=args.images,
        n_classes=args.classes,
        gt_per_image=args.boxes_per_image,
        dt_per_image=args.boxes_per_image,
    )
    print(f"{args.images} images, {len(gt)} ground-truth boxes, {len(dt)} detections, {args.classes} classes")

    times = []
    for _ in range(3):
        start = time.perf_counter()
        ours = evaluate(gt, dt, n_classes=args.classes)
        times.append(time.perf_counter() - start)
    ours_s = min(times)
    tracemalloc.start()
    evaluate(gt, dt, n_classes=args.classes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    ref = reference(gt, dt, args.images, args.classes)
    with contextlib.redirect_stdout(io.StringIO()):  # again, timed without building its index
        start = time.perf_counter()
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
        ref_s = time.perf_counter() - start
    fast_stats, fast_s = faster(gt, dt, args.images, args.classes)

    diff = float(np.max(np.abs(np.array(ours.stats_list()) - np.array(ref.stats))))
    diff_fast = float(np.max(np.abs(np.array(fast_stats) - np.array(ref.stats))))
    print(f"pycocotools      {ref_s:8.2f} s   (1.0x, baseline)")
    print(f"faster-coco-eval {fast_s:8.2f} s   ({ref_s / fast_s:.1f}x; max |diff| {diff_fast:.1e})")
    print(f"ours (best of 3) {ours_s:8.2f} s   ({ref_s / ours_s:.1f}x; max |diff| {diff:.1e})")
    print(f"our peak traced memory: {peak / 2**20:.0f} MiB")
    print("AP / AP50 / AP75:", " / ".join(f"{v:.4f}" for v in ours.stats_list()[:3]))


if __name__ == "__main__":
    main()
