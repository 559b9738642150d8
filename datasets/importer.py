"""Import: read a source, store images by content, parse annotations, and write one version atomically.

Phase 1 stores image bytes in the content-addressed store (idempotent: a re-run stores nothing new).
Phase 2 writes every row of the version in one transaction and marks it ready, so a version is never
half-written: a worker killed midway leaves it pending (then error, retryable), never half-ready.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Invalid
from datasets.formats import FormatError, RawAnnotation, RawBox, clip_box, parse_coco, parse_voc, parse_yolo
from datasets.models import Asset, Box, DatasetAsset, DatasetVersion, LabelClass, LabelKeyword, PredictionSet
from datasets.store import IMAGE_EXTENSIONS, ImageInfo, ImageRejected, inspect_image, store_bytes

IMAGE_DIRS = ("images", "jpegimages")
GT_DIRS = ("gt", "annotations", "labels")
PRED_DIRS = ("pred", "predictions")
YOLO_CLASS_FILES = ("classes.txt", "obj.names")
REPORT_LIST_LIMIT = 2000
BATCH = 5000


class Source(Protocol):
    duplicates: list[str]

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...


class UnknownClasses(Invalid):
    code = "unknown_classes"


@dataclass
class Report:
    imported: int = 0
    new_assets: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    boxes: Counter[str] = field(default_factory=Counter)
    unknown_classes: set[str] = field(default_factory=set)
    added_classes: list[str] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < REPORT_LIST_LIMIT:
            self.skipped.append({"file": name, "reason": reason})

    def as_dict(self) -> dict[str, object]:
        return {
            "imported": self.imported,
            "new_assets": self.new_assets,
            "skipped_count": self.skipped_count,
            "skipped": self.skipped,
            "boxes": dict(self.boxes),
            "unknown_classes": sorted(self.unknown_classes),
            "added_classes": self.added_classes,
        }


@dataclass
class Layout:
    images: dict[str, str]  # key (path under the image folder, no extension) -> entry name
    gt: dict[str, str]
    pred: dict[str, str]
    other: list[str]


def _split(name: str) -> tuple[str, str] | None:
    """('images'|'gt'|'pred', key) for an entry under a known folder; the key keeps sub-folders."""
    parts = PurePosixPath(name).parts
    for i, part in enumerate(parts[:-1]):
        low = part.lower()
        kind = "images" if low in IMAGE_DIRS else "gt" if low in GT_DIRS else "pred" if low in PRED_DIRS else None
        if kind:
            return kind, str(PurePosixPath(*parts[i + 1 :]))
    return None


def detect_layout(names: list[str], report: Report) -> Layout:
    layout = Layout(images={}, gt={}, pred={}, other=[])
    for name in sorted(names):
        where = _split(name)
        if where is None:
            layout.other.append(name)
            continue
        kind, rel = where
        stem, suffix = str(PurePosixPath(rel).with_suffix("")), PurePosixPath(rel).suffix.lower()
        if kind == "images":
            if suffix not in IMAGE_EXTENSIONS:
                report.skip(name, _("not an image type (png, jpg, jpeg, bmp)"))
            elif stem in layout.images:
                report.skip(name, _("another image has the same name"))
            else:
                layout.images[stem] = name
        else:
            getattr(layout, kind)[rel if suffix == ".json" else stem] = name
    return layout


@dataclass
class Parsed:
    gt: dict[str, RawAnnotation]
    pred: dict[str, RawAnnotation]
    yolo_names: list[str] | None = None


def parse_annotations(source: Source, layout: Layout, fmt: str, report: Report) -> Parsed:
    parsed = Parsed(gt={}, pred={})
    for kind in ("gt", "pred"):
        files: dict[str, str] = getattr(layout, kind)
        target: dict[str, RawAnnotation] = getattr(parsed, kind)
        if fmt == "voc":
            for stem, name in files.items():
                if not name.lower().endswith(".xml"):
                    continue
                try:
                    target[stem] = parse_voc(source.read(name))
                except FormatError as exc:
                    report.skip(name, str(exc))
        elif fmt == "coco":
            for rel, name in files.items():
                if not rel.lower().endswith(".json"):
                    continue
                try:
                    by_file, orphans = parse_coco(source.read(name))
                except FormatError as exc:
                    raise Invalid(f"{name}: {exc}", code="bad_annotations") from exc
                if orphans:
                    report.boxes["orphan_annotations"] += orphans
                for file_name, annotation in by_file.items():
                    target[str(PurePosixPath(file_name).with_suffix(""))] = annotation
        elif fmt == "yolo" and parsed.yolo_names is None:
            class_file = next(
                (n for n in layout.other + list(files.values()) if PurePosixPath(n).name in YOLO_CLASS_FILES),
                None,
            )
            if files and class_file is None:
                raise Invalid(_("A YOLO import needs classes.txt (one class name per line)."), code="bad_annotations")
            if class_file:
                parsed.yolo_names = [
                    line.strip() for line in source.read(class_file).decode().splitlines() if line.strip()
                ]
    for kind in ("gt", "pred"):
        for key, name in getattr(layout, kind).items():
            if fmt != "coco" and key not in layout.images and PurePosixPath(name).name not in YOLO_CLASS_FILES:
                if fmt == "voc" and not name.lower().endswith(".xml"):
                    continue
                report.skip(name, _("annotation names an image that is not in the import"))
    return parsed


def _resolve_classes(names: set[str], strategy: str, report: Report, user_id: int | None) -> dict[str, int]:
    from datasets.classes import class_create, resolve_keywords

    mapping = resolve_keywords(names)
    unknown = {n for n in names if " ".join(n.split()).lower() not in mapping}
    if unknown and strategy == "stop":
        raise UnknownClasses(
            _("Unknown classes: %(names)s. Add them, or import with 'ignore' or 'add'.")
            % {"names": ", ".join(sorted(unknown)[:50])},
            details={"unknown_classes": sorted(unknown)},
        )
    if strategy == "add":
        from core.models import User

        user = User.objects.filter(pk=user_id).first() if user_id else None
        for name in sorted(unknown, key=str.lower):
            if " ".join(name.split()).lower() in mapping:
                continue
            label = class_create(user=user, name=name)
            mapping[label.name.lower()] = label.pk
            report.added_classes.append(label.name)
        unknown = set()
    report.unknown_classes |= unknown
    return mapping


def run_import(
    *,
    version: DatasetVersion,
    source: Source,
    fmt: str,
    unknown_classes: str,
    user_id: int | None,
    progress: Callable[[float], None] = lambda _p: None,
) -> Report:
    report = Report()
    for name in source.duplicates:
        report.skip(name, _("the same entry name appears twice in the archive"))
    layout = detect_layout(source.names(), report)
    if not layout.images:
        raise Invalid(_("No images found: put them in an images/ (or JPEGImages/) folder."), code="no_images")
    parsed = parse_annotations(source, layout, fmt, report)
    label_names = {b.label for a in (*parsed.gt.values(), *parsed.pred.values()) for b in a.boxes}
    mapping = _resolve_classes(label_names, unknown_classes, report, user_id)

    # Phase 1: image bytes into the content store.
    infos: dict[str, ImageInfo] = {}
    seen: dict[str, str] = {}
    total = len(layout.images)
    last = time.monotonic()
    for done, (key, name) in enumerate(layout.images.items(), 1):
        try:
            data = source.read(name)
            info = inspect_image(data)
        except ImageRejected as exc:
            report.skip(name, str(exc))
            continue
        if info.sha1 in seen:
            report.skip(name, _("the same image as %(other)s") % {"other": seen[info.sha1]})
            continue
        seen[info.sha1] = name
        report.new_assets += store_bytes(info.sha1, data)
        infos[key] = info
        if time.monotonic() - last > 1.0:
            progress(0.9 * done / total)
            last = time.monotonic()

    if fmt == "yolo" and parsed.yolo_names is not None:
        for kind in ("gt", "pred"):
            for key, name in getattr(layout, kind).items():
                if key in infos and PurePosixPath(name).name not in YOLO_CLASS_FILES:
                    try:
                        getattr(parsed, kind)[key] = parse_yolo(
                            source.read(name), parsed.yolo_names, infos[key].width, infos[key].height
                        )
                    except FormatError as exc:
                        report.skip(name, str(exc))
        label_names = {b.label for a in (*parsed.gt.values(), *parsed.pred.values()) for b in a.boxes}
        mapping = _resolve_classes(label_names, unknown_classes, report, user_id)

    # Phase 2: every row of the version in one transaction.
    with transaction.atomic():
        _write_version(version, layout, infos, parsed, mapping, report)
    progress(1.0)
    return report


def _box_rows(
    version: DatasetVersion,
    asset_id: int,
    info: ImageInfo,
    annotation: RawAnnotation | None,
    mapping: dict[str, int],
    report: Report,
    kind: str,
    prediction_set: PredictionSet | None,
) -> list[Box]:
    rows: list[Box] = []
    for raw in annotation.boxes if annotation else []:
        label_id = mapping.get(" ".join(raw.label.split()).lower())
        if label_id is None:
            report.boxes[f"{kind}_unknown_class"] += 1
            continue
        outcome, box = clip_box(raw, info.width, info.height)
        if box is None:
            report.boxes[f"{kind}_{outcome.replace(': ', '_').replace(' ', '_')}"] += 1
            continue
        if outcome == "clipped":
            report.boxes[f"{kind}_clipped"] += 1
        report.boxes[kind] += 1
        rows.append(_make_box(version, asset_id, label_id, box, prediction_set))
    return rows


def _make_box(version: DatasetVersion, asset_id: int, label_id: int, box: RawBox, pset: PredictionSet | None) -> Box:
    return Box(
        version=version,
        asset_id=asset_id,
        label_id=label_id,
        prediction_set=pset,
        x1=box.x1,
        y1=box.y1,
        x2=box.x2,
        y2=box.y2,
        score=box.score if pset else None,
        tags=box.tags,
    )


def _write_version(
    version: DatasetVersion,
    layout: Layout,
    infos: dict[str, ImageInfo],
    parsed: Parsed,
    mapping: dict[str, int],
    report: Report,
) -> None:
    Asset.objects.bulk_create(
        [
            Asset(sha1=i.sha1, width=i.width, height=i.height, size_bytes=i.size_bytes, format=i.format)
            for i in infos.values()
        ],
        batch_size=BATCH,
        ignore_conflicts=True,
    )
    ids: dict[str, int] = {}
    shas = [i.sha1 for i in infos.values()]
    for start in range(0, len(shas), BATCH):
        ids.update(Asset.objects.filter(sha1__in=shas[start : start + BATCH]).values_list("sha1", "id"))
    pset = (
        PredictionSet.objects.create(version=version, source=PredictionSet.Source.IMPORTED, name="imported")
        if parsed.pred
        else None
    )
    items: list[DatasetAsset] = []
    boxes: list[Box] = []
    for key, info in infos.items():
        asset_id = ids[info.sha1]
        gt = parsed.gt.get(key)
        items.append(
            DatasetAsset(version=version, asset_id=asset_id, name=layout.images[key], tags=gt.image_tags if gt else {})
        )
        boxes += _box_rows(version, asset_id, info, gt, mapping, report, "gt", None)
        boxes += _box_rows(version, asset_id, info, parsed.pred.get(key), mapping, report, "pred", pset)
        if len(boxes) >= BATCH:
            Box.objects.bulk_create(boxes, batch_size=BATCH)
            boxes = []
    DatasetAsset.objects.bulk_create(items, batch_size=BATCH)
    Box.objects.bulk_create(boxes, batch_size=BATCH)
    report.imported = len(items)
    version_finish(version, report.as_dict())


def version_counts(version: DatasetVersion) -> dict[str, object]:
    """Asset and box counts of a version, per class by main name; one grouped query each."""
    per_class = Box.objects.filter(version=version).values("label__name", "prediction_set_id").annotate(n=Count("id"))
    gt: dict[str, int] = {}
    pred: dict[str, int] = {}
    for row in per_class:
        target = gt if row["prediction_set_id"] is None else pred
        target[row["label__name"]] = target.get(row["label__name"], 0) + row["n"]
    return {
        "asset_count": DatasetAsset.objects.filter(version=version).count(),
        "gt_box_count": sum(gt.values()),
        "pred_box_count": sum(pred.values()),
        "class_counts": {"gt": gt, "pred": pred},
    }


def version_finish(version: DatasetVersion, report: dict[str, object]) -> None:
    for key, value in version_counts(version).items():
        setattr(version, key, value)
    version.report = report
    version.state = DatasetVersion.State.READY
    version.ready_at = timezone.now()
    version.save()


__all__ = ["LabelClass", "LabelKeyword", "Report", "run_import", "version_counts", "version_finish"]
