"""Merge of two versions and filter of one, at 10k and 100k images (6 boxes each): time, and the peak memory
the Python side allocates (tracemalloc), which must not grow with the number of images.

Baseline, with --mir PATH (the ``mir`` program of ymir-cmd 2.3.0 on Python 3.8, see import_speed.py): YMIR's
``mir merge`` (host wins, like our "newer") and ``mir filter`` (keep one class) on a mir repository holding
versions of the same size and shape (N images, 6 boxes each, 8 classes), made by ``mir import`` of tiny
distinct JPEGs first (untimed: neither side's operation reads image bytes). Peak memory of mir: the peak
resident size of its process (``wait4``); ours: what the Python side allocates (the database does the work).

    .venv/bin/python benchmarks/operations_speed.py [--sizes 10000 100000] [--mir PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from _setup import django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--mir", help="path to the mir program of ymir-cmd 2.3.0 (the baseline)")
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
        if args.mir:
            for kind, (seconds, peak_kib) in mir_operations(args.mir, n).items():
                print(
                    f"{'mir ' + kind:>10} {n:>7} images: {seconds:6.2f} s  peak resident memory {peak_kib:8.0f} KiB  "
                    f"ours {figures[kind][0]:.2f} s: {seconds / figures[kind][0]:.2f}x faster (target >= 5)"
                )


def mir_operations(mir: str, n: int) -> dict[str, tuple[float, float]]:
    """(seconds, peak resident KiB) of ``mir merge`` and ``mir filter`` on two n-image branches."""
    from import_speed import MIR_ENV, mir_import_args
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="ymir-bench-mir-"))
    env = {**os.environ, **MIR_ENV}
    rng = random.Random(n)

    def run(*command: str) -> tuple[float, float]:
        started = time.perf_counter()
        child = subprocess.Popen([mir, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _pid, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"mir {command[0]} failed: {child.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        return elapsed, float(usage.ru_maxrss)

    try:
        repo = folder / "repo"
        repo.mkdir()
        run("init", "--root", str(repo))
        for branch in ("a", "b"):
            images, gt = folder / branch / "images", folder / branch / "gt"
            images.mkdir(parents=True)
            gt.mkdir()
            for i in range(n):
                name = f"{branch}{i:07d}"
                Image.frombytes("RGB", (8, 6), rng.randbytes(144)).save(images / f"{name}.jpg", quality=95)
                boxes = "".join(
                    f"<object><name>class_{rng.randrange(8)}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + 2}</xmax><ymax>{y + 2}</ymax></bndbox></object>"
                    for x, y in ((rng.randrange(1, 5), rng.randrange(1, 3)) for _ in range(6))
                )
                (gt / f"{name}.xml").write_text(
                    f"<annotation><filename>{name}.jpg</filename><size><width>8</width><height>6</height>"
                    f"<depth>3</depth></size>{boxes}</annotation>"
                )
            index = folder / f"{branch}.tsv"
            index.write_text("".join(f"{p}\n" for p in sorted(images.iterdir())))
            run(*mir_import_args(repo, index, gt, folder, branch))
        return {
            "merge": run(
                "merge",
                "--root",
                str(repo),
                "--src-revs",
                "a@a;b@b",
                "--dst-rev",
                "m@m",
                "-s",
                "host",
                "-w",
                str(folder / "work-merge"),
            ),
            "filter": run(
                "filter",
                "--root",
                str(repo),
                "--src-revs",
                "a@a",
                "--dst-rev",
                "f@f",
                "-p",
                "class_0",
                "-w",
                str(folder / "work-filter"),
            ),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
