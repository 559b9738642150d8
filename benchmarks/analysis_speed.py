"""Analysis of a large version vs the floor: one bare SQL pass reading the same columns.

Rows are made directly in SQL (N images, 6 boxes each); the analysis is timed against a single aggregate
pass over the same columns of the same rows, at 10k and 100k images: the ratio should stay flat.

    .venv/bin/python benchmarks/analysis_speed.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator

from _setup import django_on_scratch_database


def make_version(n: int, seed: int = 1, boxes_per_image: int = 6) -> int:
    from core.models import User
    from datasets.bulk import bulk_insert
    from datasets.classes import class_create
    from datasets.models import DatasetGroup, DatasetVersion, LabelClass
    from projects.models import Project

    user = User.objects.filter(username="bench_user").first() or User.objects.create_user(username="bench_user")
    if not LabelClass.objects.exists():
        for i in range(8):
            class_create(user=user, name=f"class_{i}")
    labels = list(LabelClass.objects.values_list("id", flat=True))
    project = Project.objects.create(owner=user, name=f"bench {n} {seed}")
    group = DatasetGroup.objects.create(project=project, name=f"v{n}")
    version = DatasetVersion.objects.create(group=group, number=1, state="ready")
    rng = random.Random(seed)
    offset = seed * 10**9 + n * 10
    bulk_insert(
        "datasets_asset",
        ("sha1", "width", "height", "size_bytes", "format", "has_thumbnail", "decode_failed", "created_at"),
        (
            (
                f"{offset + i:040x}",
                rng.choice((640, 800, 1280)),
                rng.choice((480, 600, 720)),
                rng.randint(20_000, 900_000),
                "jpeg",
                False,
                False,
                "2026-01-01T00:00:00Z",
            )
            for i in range(n)
        ),
    )
    from datasets.models import Asset

    ids = list(
        Asset.objects.filter(sha1__gte=f"{offset:040x}", sha1__lt=f"{offset + n:040x}").values_list("id", flat=True)
    )
    bulk_insert(
        "datasets_datasetasset", ("version_id", "asset_id", "name", "tags"), ((version.pk, a, "", {}) for a in ids)
    )

    def boxes() -> Iterator[tuple[object, ...]]:
        for a in ids:
            for _ in range(boxes_per_image):
                x, y = rng.uniform(0, 500), rng.uniform(0, 400)
                w, h = rng.uniform(4, 140), rng.uniform(4, 80)
                yield (version.pk, a, rng.choice(labels), None, x, y, x + w, y + h, None, {})

    bulk_insert(
        "datasets_box",
        ("version_id", "asset_id", "label_id", "prediction_set_id", "x1", "y1", "x2", "y2", "score", "tags"),
        boxes(),
    )
    return version.pk


def floor_pass(version_id: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT SUM(a.size_bytes), SUM(a.width * 1.0 / a.height), SUM(a.width * a.height) "
            "FROM datasets_datasetasset x JOIN datasets_asset a ON a.id = x.asset_id WHERE x.version_id = %s",
            [version_id],
        )
        cursor.fetchall()
        cursor.execute(
            "SELECT SUM(b.label_id), SUM((b.x2 - b.x1) * (b.y2 - b.y1) / (a.width * a.height * 1.0)) "
            "FROM datasets_box b JOIN datasets_asset a ON a.id = b.asset_id WHERE b.version_id = %s",
            [version_id],
        )
        cursor.fetchall()


def best_of(function: Callable[..., object], *args: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    django_on_scratch_database()
    from django.conf import settings

    from datasets.analysis import analyse
    from datasets.models import DatasetVersion

    print(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
    for n in args.sizes:
        version_id = make_version(n)
        version = DatasetVersion.objects.select_related("group").get(pk=version_id)
        floor = best_of(floor_pass, version_id)
        ours = best_of(analyse, version)
        print(
            f"{n:>7} images, {6 * n:>7} boxes: floor {floor * 1000:8.1f} ms  analysis {ours * 1000:8.1f} ms  "
            f"ratio {ours / floor:.2f}  (target <= 2.0)"
        )


if __name__ == "__main__":
    main()
