"""Merge of two versions and filter of one, at 10k and 100k images (6 boxes each): time, and the peak memory
the Python side allocates (tracemalloc), which must not grow with the number of images.

`mir merge` / `mir filter` (ymir-cmd 2.3.0) need mir repositories holding the same data; they are not run here.

    .venv/bin/python benchmarks/operations_speed.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from _setup import django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    django_on_scratch_database()
    from analysis_speed import make_version
    from django.conf import settings

    from core.models import User
    from datasets.models import DatasetVersion, LabelClass
    from datasets.operations import operation_start
    from datasets.services import operation_run

    print(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
    for n in args.sizes:
        a, b = make_version(n, seed=1), make_version(n, seed=2)
        user = User.objects.get(username="bench_user")
        label = LabelClass.objects.order_by("id").values_list("name", flat=True)[0]
        figures = {}
        for kind, params in (
            ("merge", {"inputs": [a, b], "strategy": "newer"}),
            ("filter", {"inputs": [a], "classes": [label], "mode": "keep"}),
        ):
            (out, *_rest) = operation_start(user=user, kind=kind, name=f"{kind}-{n}", params=params)
            assert out.task_id is not None
            tracemalloc.start()
            started = time.perf_counter()
            operation_run(out.task_id)
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out = DatasetVersion.objects.get(pk=out.pk)
            assert out.state == "ready", out.report
            figures[kind] = (elapsed, peak, out.asset_count, out.gt_box_count)
        for kind, (elapsed, peak, assets, boxes) in figures.items():
            print(
                f"{kind:>6} {n:>7} images: {elapsed:6.2f} s  ({assets} images, {boxes} boxes out)  "
                f"peak Python memory {peak / 1024:8.0f} KiB"
            )


if __name__ == "__main__":
    main()
