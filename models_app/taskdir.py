"""The task folder on the shared workspace: ``tasks/<id>/in`` (mounted read-only at /in) and ``out`` (/out).

Images are hard links to the asset store (no bytes copied), named ``<sha1>.<ext>`` as the contract says.
The folder is built under ``in.partial`` and renamed when complete, so a redelivered launch never sees half
of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import yaml
from django.conf import settings

from datasets.classes import resolve_keywords
from datasets.models import DatasetAsset, DatasetVersion
from datasets.store import asset_path
from models_app.contract import IN, ContractError, parse_export_format

CHUNK = 2000
EXTENSIONS = {"jpeg": "jpg", "png": "png", "bmp": "bmp"}


def task_dir(task_id: int) -> Path:
    return Path(settings.YMIR_WORKSPACE) / "tasks" / str(task_id)


def in_asset_name(sha1: str, fmt: str) -> str:
    return f"{sha1[:2]}/{sha1}.{EXTENSIONS.get(fmt, fmt)}"


def link_file(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target`` (a copy across file systems); an existing target is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:  # another file system: the bytes have to travel
        shutil.copyfile(source, target)


def _items(version_id: int) -> Iterator[tuple[list[tuple[int, str, str, int, int]], dict[int, list[tuple[Any, ...]]]]]:
    """(asset id, sha1, format, width, height) in id order, a chunk at a time, with their ground-truth boxes."""
    from datasets.models import Box

    last = 0
    while True:
        rows = list(
            DatasetAsset.objects.filter(version_id=version_id, id__gt=last)
            .order_by("id")
            .values_list("id", "asset_id", "asset__sha1", "asset__format", "asset__width", "asset__height")[:CHUNK]
        )
        if not rows:
            return
        boxes: dict[int, list[tuple[Any, ...]]] = {}
        for box in Box.objects.filter(
            version_id=version_id, prediction_set__isnull=True, asset_id__in=[r[1] for r in rows]
        ).values_list("asset_id", "label_id", "x1", "y1", "x2", "y2", "tags"):
            boxes.setdefault(box[0], []).append(box[1:])
        yield [(r[1], r[2], r[3], r[4], r[5]) for r in rows], boxes
        last = rows[-1][0]


def _voc(name: str, width: int, height: int, boxes: list[tuple[Any, ...]], names: dict[int, str]) -> str:
    objects = "".join(
        f"<object><name>{escape(names[label])}</name>"
        + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in (tags or {}).items() if k in ("difficult", "truncated"))
        + f"<bndbox><xmin>{x1:g}</xmin><ymin>{y1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
        for label, x1, y1, x2, y2, tags in boxes
        if label in names
    )
    return (
        f"<annotation><filename>{escape(name)}</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objects}</annotation>"
    )


class InputWriter:
    """Writes one task's /in folder."""

    def __init__(self, root: Path, class_names: list[str], export_format: str) -> None:
        self.root = root
        self.class_names = class_names
        self.anno = parse_export_format(export_format)
        ids = resolve_keywords(class_names)
        missing = [n for n in class_names if " ".join(n.split()).lower() not in ids]
        if missing:
            raise ContractError(f"unknown classes: {', '.join(missing)}")
        self.index_of = {ids[" ".join(n.split()).lower()]: i for i, n in enumerate(class_names)}
        self.name_of = {label: class_names[i] for label, i in self.index_of.items()}
        self.coco: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in enumerate(class_names)],
        }
        self.linked: set[str] = set()
        self.known: dict[str, str] = {}

    def _asset(self, sha1: str, fmt: str) -> str:
        name = in_asset_name(sha1, fmt)
        if sha1 not in self.linked:
            link_file(asset_path(sha1), self.root / "assets" / name)
            self.linked.add(sha1)
        container = str(IN / "assets" / name)
        self.known[container] = sha1
        self.known[Path(name).name] = sha1
        return container

    def _annotation(self, asset_id: int, sha1: str, fmt: str, w: int, h: int, boxes: list[tuple[Any, ...]]) -> str:
        if self.anno == "none":
            return ""
        if self.anno == "coco":
            image_id = len(self.coco["images"]) + 1
            self.coco["images"].append({"id": image_id, "file_name": in_asset_name(sha1, fmt), "width": w, "height": h})
            for label, x1, y1, x2, y2, _tags in boxes:
                if label in self.index_of:
                    self.coco["annotations"].append(
                        {
                            "id": len(self.coco["annotations"]) + 1,
                            "image_id": image_id,
                            "category_id": self.index_of[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": 0,
                        }
                    )
            return str(IN / "annotations" / "coco-annotations.json")
        suffix = "txt" if self.anno == "ark" else "xml"
        relative = f"{sha1[:2]}/{sha1}.{suffix}"
        target = self.root / "annotations" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.anno == "ark":
            text = "".join(
                f"{self.index_of[label]}, {x1:g}, {y1:g}, {x2:g}, {y2:g}\n"
                for label, x1, y1, x2, y2, _tags in boxes
                if label in self.index_of
            )
        else:
            text = _voc(in_asset_name(sha1, fmt), w, h, boxes, self.name_of)
        target.write_text(text)
        return str(IN / "annotations" / relative)

    def index(
        self, filename: str, version: DatasetVersion, *, annotated: bool, skip: set[int] | frozenset[int] = frozenset()
    ) -> int:
        count = 0
        with (self.root / filename).open("w") as index:
            for rows, boxes in _items(version.pk):
                for asset_id, sha1, fmt, w, h in rows:
                    if asset_id in skip:
                        continue
                    image = self._asset(sha1, fmt)
                    if annotated:
                        annotation = self._annotation(asset_id, sha1, fmt, w, h, boxes.get(asset_id, []))
                        index.write(f"{image}\t{annotation}\n" if annotation else f"{image}\n")
                    else:
                        index.write(f"{image}\n")
                    count += 1
        return count

    def finish(self) -> None:
        if self.anno == "coco" and self.coco["images"]:
            (self.root / "annotations").mkdir(exist_ok=True)
            (self.root / "annotations" / "coco-annotations.json").write_text(json.dumps(self.coco))


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def link_models(source: Path, target: Path, files: list[str] | None = None) -> list[str]:
    """Hard-link a model folder (``<stage>/<files>``), or only ``files`` of it, into /in/models; the container
    paths of the files."""
    paths = []
    chosen = [source / f for f in files] if files is not None else source.rglob("*")
    for file in sorted(p for p in chosen if p.is_file() and not p.is_symlink()):
        relative = file.relative_to(source)
        link_file(file, target / relative)
        paths.append(str(IN / "models" / relative))
    return paths
