"""Import of a VOC zip (640x480 JPEGs, ~6 boxes each), timed to the moment the version is ready.

Baseline 1, the physical ceiling, runs in the same process on the same zip: one core doing only the
unavoidable work per image (read the entry, sha1, image header, XML parse, write the bytes into a
content-addressed folder). The figure that matters: (baseline time / import time) / cores the import used.

    .venv/bin/python benchmarks/import_speed.py [--count 10000] [--mir PATH]

Baseline 2, YMIR's own `mir import` (PyPI ymir-cmd 2.3.0 on Python 3.8, in its own virtual environment:
`python3.8 -m venv mir38 && mir38/bin/pip install ymir-cmd==2.3.0 pycocotools`), runs when --mir names its
`mir` program; it reads an extracted folder (the extraction is not timed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import time
import zipfile
from pathlib import Path

from _setup import django_on_scratch_database


def build_zip(count: int) -> Path:
    from datasets.demo import write_voc_zip

    path = Path(f"/tmp/ymir-bench-voc-{count}.zip")
    if not path.exists():
        started = time.perf_counter()
        write_voc_zip(path.with_suffix(".part"), count=count, seed=77)
        path.with_suffix(".part").rename(path)
        print(f"built {path} in {time.perf_counter() - started:.1f} s")
    return path


def baseline(path: Path, out: Path) -> float:
    from defusedxml.ElementTree import fromstring
    from PIL import Image

    started = time.perf_counter()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.startswith("images/"):
                sha1 = hashlib.sha1(data).hexdigest()
                with Image.open(io.BytesIO(data)) as image:
                    _ = image.size
                target = out / sha1[:2] / sha1
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            else:
                fromstring(data)
    return time.perf_counter() - started


def ours(path: Path) -> float:
    from core.models import User
    from datasets.classes import class_create
    from datasets.demo import CLASSES
    from datasets.services import dataset_import_start, import_execute
    from projects.models import Project

    user = User.objects.create_user(username="bench_user", password="x")
    for name in CLASSES:
        class_create(user=user, name=name)
    project = Project.objects.create(owner=user, name="bench")
    from ymir.celery import app

    with app.producer_or_acquire():  # as in a running platform, Celery's broker client is loaded (0.7 s, once)
        pass
    started = time.perf_counter()
    version = dataset_import_start(user=user, project=project, name="bench", upload=Path(path))
    assert version.task_id is not None
    import_execute(version.task_id)
    elapsed = time.perf_counter() - started
    version.refresh_from_db()
    assert version.state == "ready" and version.asset_count > 0, version.report
    return elapsed


MIR_ENV = {
    f"GIT_{who}_{what}": value
    for who in ("AUTHOR", "COMMITTER")
    for what, value in (("NAME", "bench"), ("EMAIL", "b@b"))
}


def mir_import_args(repo: Path, index: Path, gt: Path, folder: Path, rev: str) -> list[str]:
    """The arguments of ``mir import`` of a VOC folder (images listed in ``index``) into branch ``rev``."""
    return [
        "import", "--root", str(repo), "--index-file", str(index), "--gt-dir", str(gt),
        "--gen-dir", str(folder / "gen"), "--dst-rev", f"{rev}@{rev}", "-w", str(folder / "work"),
        "--unknown-types-strategy", "add", "--anno-type", "det-box",
    ]  # fmt: skip


def mir_import(mir: str, path: Path, scratch: Path) -> float:
    import subprocess

    folder = scratch / "mir"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder / "src")
    index = folder / "index.tsv"
    index.write_text("".join(f"{p}\n" for p in sorted((folder / "src" / "images").iterdir())))
    repo = folder / "repo"
    repo.mkdir()
    env = {**os.environ, **MIR_ENV}
    subprocess.run([mir, "init", "--root", str(repo)], check=True, capture_output=True, env=env)
    started = time.perf_counter()
    arguments = mir_import_args(repo, index, folder / "src" / "gt", folder, "a")
    subprocess.run([mir, *arguments], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--mir", help="path to the mir program of ymir-cmd 2.3.0")
    args = parser.parse_args()
    scratch = django_on_scratch_database()
    from django.conf import settings

    zip_path = build_zip(args.count)
    copy = scratch / "upload.zip"
    copy.write_bytes(zip_path.read_bytes())
    base = baseline(zip_path, scratch / "baseline-store")
    mine = ours(copy)
    cores = settings.YMIR_IMPORT_WORKERS or os.cpu_count() or 1
    db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"images: {args.count}  database: {db}  cores: {cores}")
    print(f"baseline 1 (one core, unavoidable work): {base:.2f} s  ({args.count / base:.0f} images/s)")
    print(f"import to ready:                         {mine:.2f} s  ({args.count / mine:.0f} images/s)")
    print(f"speed vs baseline 1: {base / mine:.2f}x   per core: {base / mine / cores:.2f}  (target >= 0.80)")
    if args.mir:
        mir = mir_import(args.mir, zip_path, scratch)
        print(f"mir import (baseline 2):                 {mir:.2f} s  ({args.count / mir:.0f} images/s)")
        print(f"speed vs mir import: {mir / mine:.2f}x  (target >= 3)   mir vs baseline 1: {base / mir:.2f}")


if __name__ == "__main__":
    main()
