"""The thumbnail and quality pass vs a same-run baseline of Pillow's draft-mode decode + resize (one core).

Target: (baseline time / pass time) / cores used >= 0.8.

    .venv/bin/python benchmarks/thumbnail_speed.py [--count 2000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _setup import django_on_scratch_database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    django_on_scratch_database()
    from django.conf import settings
    from PIL import Image

    from core.models import User
    from core.workspace import workspace_root
    from datasets.demo import write_voc_zip
    from datasets.models import DatasetAsset
    from datasets.services import dataset_import_start, import_execute, thumbnails_make
    from datasets.store import asset_path
    from projects.models import Project

    user = User.objects.create_user(username="bench_user")
    project = Project.objects.create(owner=user, name="bench")
    archive = write_voc_zip(workspace_root() / "uploads" / "t.zip", count=args.count, seed=9, with_gt=False)
    version = dataset_import_start(user=user, project=project, name="t", upload=Path(archive))
    assert version.task_id is not None
    import_execute(version.task_id)
    shas = list(DatasetAsset.objects.filter(version=version).values_list("asset__sha1", flat=True))

    started = time.perf_counter()
    for sha1 in shas:
        with Image.open(asset_path(sha1)) as image:
            image.draft("RGB", (256, 256))
            image.convert("RGB").thumbnail((256, 256))
    baseline = time.perf_counter() - started

    started = time.perf_counter()
    made = thumbnails_make(version.pk)
    ours = time.perf_counter() - started
    cores = settings.YMIR_IMPORT_WORKERS or os.cpu_count() or 1
    print(f"images: {made}  cores: {cores}")
    print(f"baseline (draft decode + resize, one core): {baseline:.2f} s")
    print(f"thumbnail + quality pass:                   {ours:.2f} s")
    print(f"per core: {baseline / ours / cores:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
