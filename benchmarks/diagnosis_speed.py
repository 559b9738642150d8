"""Diagnosis: computing an evaluation from the database, and rendering its page at 100 and 10,000 images.

The page reads the stored result, so rendering a 10,000-image evaluation should cost about what a 100-image
one does (target: at most 1.2x). Each version has 6 ground-truth boxes per image (8 classes) and a prediction
set of jittered copies plus random boxes; the evaluation computes all 12 COCO numbers, per-class tables, PR
curves and the confusion matrix. Render figures are the best of 5 through Django's test client.

    DATABASE_URL=postgres://... .venv/bin/python benchmarks/diagnosis_speed.py [--sizes 100 10000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Iterator
from typing import Any

from _setup import django_on_scratch_database


def add_predictions(version_id: int, seed: int = 7) -> int:
    from datasets.bulk import bulk_insert
    from datasets.models import Box, PredictionSet

    pset = PredictionSet.objects.create(version_id=version_id, source="model", name="bench model")
    rng = random.Random(seed)
    gt = list(Box.objects.filter(version_id=version_id).values_list("asset_id", "label_id", "x1", "y1", "x2", "y2"))
    labels = sorted({row[1] for row in gt})

    def rows() -> Iterator[tuple[object, ...]]:
        for asset, label, x1, y1, x2, y2 in gt:
            if rng.random() < 0.8:
                j = [rng.gauss(0, 4) for _ in range(4)]
                yield (version_id, asset, label, pset.pk, x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3], rng.random(), {})
            if rng.random() < 0.2:
                x, y = rng.uniform(0, 500), rng.uniform(0, 400)
                yield (version_id, asset, rng.choice(labels), pset.pk, x, y, x + 40, y + 30, rng.random() * 0.6, {})

    bulk_insert(
        "datasets_box",
        ("version_id", "asset_id", "label_id", "prediction_set_id", "x1", "y1", "x2", "y2", "score", "tags"),
        rows(),
    )
    return pset.pk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    args = parser.parse_args()
    django_on_scratch_database()
    from analysis_speed import make_version
    from django.test import Client

    from core.models import User
    from datasets.importer import version_finish
    from datasets.models import DatasetVersion, PredictionSet
    from models_app.evaluations import evaluation_create

    renders: dict[int, float] = {}
    computes: dict[int, float] = {}
    pages: dict[int, Any] = {}
    for n in args.sizes:
        version = DatasetVersion.objects.get(pk=make_version(n, boxes_per_image=6))
        add_predictions(version.pk)
        version_finish(version, {})
        user = User.objects.get(username="bench_user")
        started = time.perf_counter()
        evaluation = evaluation_create(
            user=user,
            version=version,
            prediction_sets=list(PredictionSet.objects.filter(version=version)),
            run_now=True,
        )
        computes[n] = time.perf_counter() - started
        pages[n] = evaluation
    client = Client()
    client.force_login(User.objects.get(username="bench_user"))
    gc.collect()
    for _round in range(20):  # alternate the sizes, so drift and noise fall on both alike
        for n, evaluation in pages.items():
            t = time.perf_counter()
            response = client.get(f"/evaluations/{evaluation.pk}/")
            renders[n] = min(renders.get(n, float("inf")), time.perf_counter() - t)
            assert response.status_code == 200 and b"chart-ap" in response.content
    for n, evaluation in pages.items():
        result = evaluation.result
        print(
            f"{n:>7} images, {result['gt_boxes']} GT, {result['sets'][0]['predictions']} predictions: "
            f"evaluate (load from DB + compute) {computes[n]:.2f} s, render {renders[n] * 1000:.1f} ms (best of 20)"
        )
    small, large = min(args.sizes), max(args.sizes)
    print(f"render {large} vs {small} images: {renders[large] / renders[small]:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
