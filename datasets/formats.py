"""Annotation formats: Pascal VOC, COCO json and YOLO txt, parsed into one neutral form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

VOC_BOX_TAGS = ("difficult", "truncated", "pose", "occluded")


class FormatError(ValueError):
    """An annotation file that cannot be read; the message says why."""


@dataclass
class RawBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RawAnnotation:
    boxes: list[RawBox] = field(default_factory=list)
    image_tags: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    checked: dict[str, int] | None = None  # set once boxes are clipped: counts of 'clipped' and 'rejected_*'


def clip_annotation(annotation: RawAnnotation, width: int, height: int) -> None:
    """Clip every box to the image once; rejected boxes are dropped and counted by reason."""
    if annotation.checked is not None:
        return
    counts: dict[str, int] = {}
    kept: list[RawBox] = []
    for raw in annotation.boxes:
        outcome, box = clip_box(raw, width, height)
        if box is None:
            reason = outcome.replace(": ", "_").replace(" ", "_")
            counts[reason] = counts.get(reason, 0) + 1
            continue
        if outcome == "clipped":
            counts["clipped"] = counts.get("clipped", 0) + 1
        kept.append(box)
    annotation.boxes = kept
    annotation.checked = counts


def _text(node: Element | None) -> str:
    return (node.text or "").strip() if node is not None else ""


def _number(node: Element | None, what: str) -> float:
    try:
        value = float(_text(node))
    except ValueError as exc:
        raise FormatError(f"{what} is not a number") from exc
    return value


def parse_voc(data: bytes) -> RawAnnotation:
    """One VOC XML file. DTDs and entities are refused (no expansion attacks)."""
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise FormatError(f"refused XML ({type(exc).__name__})") from exc
    except ParseError as exc:
        raise FormatError(f"invalid XML: {exc}") from exc
    if root.tag != "annotation":
        raise FormatError("not a VOC annotation (root element is not <annotation>)")
    result = RawAnnotation(filename=_text(root.find("filename")) or None)
    for node in root.findall("tags/*") + root.findall("image_tags/*"):
        if len(node) == 0 and node.tag:
            result.image_tags[node.tag] = _text(node)
    for obj in root.findall("object"):
        name = _text(obj.find("name"))
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            raise FormatError("an <object> lacks <name> or <bndbox>")
        box = RawBox(
            label=name,
            x1=_number(bnd.find("xmin"), "xmin"),
            y1=_number(bnd.find("ymin"), "ymin"),
            x2=_number(bnd.find("xmax"), "xmax"),
            y2=_number(bnd.find("ymax"), "ymax"),
        )
        for tag in ("score", "confidence"):
            if obj.find(tag) is not None:
                box.score = _number(obj.find(tag), tag)
        for child in obj:
            if child.tag in VOC_BOX_TAGS:
                box.tags[child.tag] = _text(child)
        for attr in obj.findall("attributes/attribute"):
            key = _text(attr.find("name"))
            if key:
                box.tags[key] = _text(attr.find("value"))
        for child in obj.findall("tags/*"):
            if len(child) == 0:
                box.tags[child.tag] = _text(child)
        result.boxes.append(box)
    return result


def parse_coco(data: bytes) -> tuple[dict[str, RawAnnotation], int]:
    """A COCO json: annotations keyed by image file name, and the count of annotations naming no image."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise FormatError("not a COCO document (no 'images' list)")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
        images = {int(i["id"]): str(i["file_name"]) for i in doc["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"malformed COCO images or categories: {exc}") from exc
    result: dict[str, RawAnnotation] = {name: RawAnnotation(filename=name) for name in images.values()}
    orphans = 0
    for ann in doc.get("annotations", []):
        try:
            name = images.get(int(ann["image_id"]))
            label = categories[int(ann["category_id"])]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed COCO annotation: {exc}") from exc
        if name is None:
            orphans += 1
            continue
        box = RawBox(label=label, x1=x, y1=y, x2=x + w, y2=y + h)
        if "score" in ann:
            box.score = float(ann["score"])
        if ann.get("iscrowd"):
            box.tags["iscrowd"] = "1"
        for key, value in (ann.get("attributes") or {}).items():
            box.tags[str(key)] = str(value)
        result[name].boxes.append(box)
    return result, orphans


def parse_yolo(data: bytes, names: list[str], width: int, height: int) -> RawAnnotation:
    """YOLO txt: ``class cx cy w h [score]`` per line, normalised to the image size."""
    result = RawAnnotation()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError("not UTF-8 text") from exc
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (5, 6):
            raise FormatError(f"line {number}: expected 5 or 6 fields")
        try:
            index = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
            score = float(parts[5]) if len(parts) == 6 else None
        except ValueError as exc:
            raise FormatError(f"line {number}: not numbers") from exc
        if not 0 <= index < len(names):
            raise FormatError(f"line {number}: class index {index} not in classes.txt")
        result.boxes.append(
            RawBox(
                label=names[index],
                x1=(cx - w / 2) * width,
                y1=(cy - h / 2) * height,
                x2=(cx + w / 2) * width,
                y2=(cy + h / 2) * height,
                score=score,
            )
        )
    return result


def clip_box(box: RawBox, width: int, height: int) -> tuple[str, RawBox | None]:
    """('ok'|'clipped', box) or ('rejected: why', None). Inverted, empty, NaN or outside boxes are rejected."""
    coords = (box.x1, box.y1, box.x2, box.y2)
    if any(math.isnan(v) or math.isinf(v) for v in coords):
        return "rejected: not a number", None
    if box.x2 < box.x1 or box.y2 < box.y1:
        return "rejected: inverted (x2 < x1 or y2 < y1)", None
    x1, y1 = max(0.0, box.x1), max(0.0, box.y1)
    x2, y2 = min(float(width), box.x2), min(float(height), box.y2)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return (
            "rejected: empty" if box.x2 - box.x1 <= 0 or box.y2 - box.y1 <= 0 else "rejected: outside the image"
        ), None
    if (x1, y1, x2, y2) == coords:
        return "ok", box
    return "clipped", RawBox(box.label, x1, y1, x2, y2, box.score, box.tags)
