"""Export a version as a VOC zip (images/, gt/, pred/) or a COCO zip (images/ and annotations/*.json).

Import -> export -> import gives the same version: the same images, boxes, classes, scores and tags.
"""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape

from datasets.importer import IMAGE_DIRS
from datasets.models import Box, DatasetAsset, DatasetVersion
from datasets.store import asset_path

VOC_BOX_TAGS = ("difficult", "truncated", "pose", "occluded")
CHUNK = 2000


def _export_name(item: DatasetAsset, used: set[str]) -> str:
    """The image's path under images/ as imported; its sha1 when that is unknown or taken."""
    parts = PurePosixPath(item.name).parts
    rel = ""
    for i, part in enumerate(parts[:-1]):
        if part.lower() in IMAGE_DIRS:
            rel = str(PurePosixPath(*parts[i + 1 :]))
            break
    if not rel or rel in used:
        rel = f"{item.asset.sha1}.{'jpg' if item.asset.format == 'jpeg' else item.asset.format}"
    used.add(rel)
    return rel


def _chunks(version: DatasetVersion) -> Iterator[tuple[list[DatasetAsset], dict[int, list[Box]]]]:
    """Items in id order, a chunk at a time, each with its boxes: memory stays flat with the version's size."""
    last = 0
    while True:
        items = list(
            DatasetAsset.objects.filter(version=version, id__gt=last).select_related("asset").order_by("id")[:CHUNK]
        )
        if not items:
            return
        boxes: dict[int, list[Box]] = defaultdict(list)
        for box in Box.objects.filter(version=version, asset_id__in=[i.asset_id for i in items]).select_related(
            "label"
        ):
            boxes[box.asset_id].append(box)
        yield items, boxes
        last = items[-1].pk


def _voc_object(box: Box) -> str:
    tags = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in box.tags.items() if k in VOC_BOX_TAGS)
    attributes = "".join(
        f"<attribute><name>{escape(k)}</name><value>{escape(str(v))}</value></attribute>"
        for k, v in box.tags.items()
        if k not in VOC_BOX_TAGS
    )
    score = f"<score>{box.score!r}</score>" if box.score is not None else ""
    return (
        f"<object><name>{escape(box.label.name)}</name>{score}{tags}"
        + (f"<attributes>{attributes}</attributes>" if attributes else "")
        + f"<bndbox><xmin>{box.x1!r}</xmin><ymin>{box.y1!r}</ymin><xmax>{box.x2!r}</xmax><ymax>{box.y2!r}</ymax>"
        "</bndbox></object>"
    )


def _voc_xml(name: str, item: DatasetAsset, boxes: list[Box]) -> bytes:
    image_tags = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in item.tags.items() if _xml_name(k))
    return (
        f"<annotation><filename>{escape(name)}</filename><size><width>{item.asset.width}</width>"
        f"<height>{item.asset.height}</height><depth>3</depth></size>"
        + (f"<tags>{image_tags}</tags>" if image_tags else "")
        + "".join(_voc_object(b) for b in boxes)
        + "</annotation>"
    ).encode()


def _xml_name(key: str) -> bool:
    return bool(key) and (key[0].isalpha() or key[0] == "_") and all(c.isalnum() or c in "_-." for c in key)


def export_voc(version: DatasetVersion, out: Path) -> Path:
    used: set[str] = set()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for items, boxes in _chunks(version):
            for item in items:
                name = _export_name(item, used)
                stem = str(PurePosixPath(name).with_suffix(""))
                archive.write(asset_path(item.asset.sha1), f"images/{name}")
                own = boxes.get(item.asset_id, [])
                gt = [b for b in own if b.prediction_set_id is None]
                pred = [b for b in own if b.prediction_set_id is not None]
                archive.writestr(f"gt/{stem}.xml", _voc_xml(name, item, gt))
                if pred:
                    archive.writestr(f"pred/{stem}.xml", _voc_xml(name, item, pred))
    return out


def export_coco(version: DatasetVersion, out: Path) -> Path:
    used: set[str] = set()
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    predictions: list[dict[str, object]] = []
    categories: dict[int, str] = {}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for items, boxes in _chunks(version):
            for item in items:
                name = _export_name(item, used)
                archive.write(asset_path(item.asset.sha1), f"images/{name}")
                image_id = len(images) + 1
                images.append(
                    {"id": image_id, "file_name": name, "width": item.asset.width, "height": item.asset.height}
                )
                for box in boxes.get(item.asset_id, []):
                    categories[box.label_id] = box.label.name
                    entry: dict[str, object] = {
                        "id": len(annotations) + len(predictions) + 1,
                        "image_id": image_id,
                        "category_id": box.label_id,
                        "bbox": [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1],
                        "area": (box.x2 - box.x1) * (box.y2 - box.y1),
                        "iscrowd": int(box.tags.get("iscrowd", 0) in ("1", 1)),
                        "attributes": {k: v for k, v in box.tags.items() if k != "iscrowd"},
                    }
                    if box.prediction_set_id is None:
                        annotations.append(entry)
                    else:
                        entry["score"] = box.score
                        predictions.append(entry)
        cats = [{"id": k, "name": v} for k, v in sorted(categories.items())]
        archive.writestr(
            "annotations/instances.json", json.dumps({"images": images, "annotations": annotations, "categories": cats})
        )
        if predictions:
            archive.writestr(
                "pred/predictions.json", json.dumps({"images": images, "annotations": predictions, "categories": cats})
            )
    return out
