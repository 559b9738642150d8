"""Import: read a source, store images by content, parse annotations, and write one version atomically.

Phase 1 stores image bytes in the content-addressed store (idempotent: a re-run stores nothing new).
Phase 2 writes every row of the version in one transaction and marks it ready, so a version is never
half-written: a worker killed midway leaves it pending (then error, retryable), never half-ready.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Invalid
from core.workspace import workspace_root
from datasets.bulk import bulk_insert, insert_assets_ignoring_known
from datasets.formats import FormatError, RawAnnotation, clip_annotation, parse_coco, parse_yolo
from datasets.ingest import Spec, ingest_chunk, run_parallel, worker_count
from datasets.models import Asset, Box, DatasetAsset, DatasetVersion, PredictionSet
from datasets.store import IMAGE_EXTENSIONS, ImageInfo

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

    def spec(self) -> Spec: ...


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


FOLDER_KINDS = {
    **dict.fromkeys(IMAGE_DIRS, "images"),
    **dict.fromkeys(GT_DIRS, "gt"),
    **dict.fromkeys(PRED_DIRS, "pred"),
}


def _split(name: str) -> tuple[str, str] | None:
    """('images'|'gt'|'pred', key) for an entry under a known folder; the key keeps sub-folders."""
    parts = name.split("/")
    for i, part in enumerate(parts[:-1]):
        kind = FOLDER_KINDS.get(part.lower())
        if kind:
            return kind, "/".join(parts[i + 1 :])
    return None


def _stem_suffix(rel: str) -> tuple[str, str]:
    slash = rel.rfind("/")
    dot = rel.rfind(".")
    if dot <= slash + 1:  # no suffix, or a dot-file
        return rel, ""
    return rel[:dot], rel[dot:].lower()


def detect_layout(names: list[str], report: Report) -> Layout:
    layout = Layout(images={}, gt={}, pred={}, other=[])
    for name in sorted(names):
        where = _split(name)
        if where is None:
            layout.other.append(name)
            continue
        kind, rel = where
        stem, suffix = _stem_suffix(rel)
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
    """COCO and YOLO annotations (VOC files are parsed beside their images, in the parallel pass)."""
    parsed = Parsed(gt={}, pred={})
    for kind in ("gt", "pred"):
        files_of_kind: dict[str, str] = getattr(layout, kind)
        target: dict[str, RawAnnotation] = getattr(parsed, kind)
        if fmt == "coco":
            for rel, name in files_of_kind.items():
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
                (n for n in layout.other + list(files_of_kind.values()) if PurePosixPath(n).name in YOLO_CLASS_FILES),
                None,
            )
            if files_of_kind and class_file is None:
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
    writer = VersionWriter(version, report, unknown_classes, user_id)
    if fmt == "coco":  # every class is known before any byte is stored
        writer.resolve({b.label for a in (*parsed.gt.values(), *parsed.pred.values()) for b in a.boxes})

    def xml(kind: str, key: str) -> str | None:
        name = getattr(layout, kind).get(key)
        return name if fmt == "voc" and name and name.lower().endswith(".xml") else None

    def yolo(kind: str, key: str, info: ImageInfo) -> RawAnnotation | None:
        name = getattr(layout, kind).get(key)
        if not name or parsed.yolo_names is None or PurePosixPath(name).name in YOLO_CLASS_FILES:
            return None
        try:
            return parse_yolo(source.read(name), parsed.yolo_names, info.width, info.height)
        except FormatError as exc:
            report.skip(name, str(exc))
            return None

    # One parallel pass (image bytes into the content store, VOC parsed and clipped in the workers) while
    # this process writes the rows of the version, chunk by chunk. The version stays pending, so none of its
    # rows is visible, until everything is written; on failure its rows are deleted.
    work = [(key, name, xml("gt", key), xml("pred", key)) for key, name in layout.images.items()]
    seen: dict[str, str] = {}
    done = 0
    last = time.monotonic()
    fixed = (source.spec(), str(workspace_root()), settings.YMIR_MAX_IMAGE_PIXELS)
    workers = worker_count(settings.YMIR_IMPORT_WORKERS)
    for key, name, info, why, stored, gt, pred, errors in run_parallel(ingest_chunk, fixed, work, workers):
        done += 1
        if time.monotonic() - last > 1.0:
            progress(0.95 * done / len(work))
            last = time.monotonic()
        for file_name, error in errors:
            report.skip(file_name, error)
        if info is None:
            report.skip(name, why)
            continue
        if info.sha1 in seen:
            report.skip(name, _("the same image as %(other)s") % {"other": seen[info.sha1]})
            continue
        seen[info.sha1] = name
        report.new_assets += stored
        if fmt == "coco":
            gt, pred = parsed.gt.get(key), parsed.pred.get(key)
        elif fmt == "yolo":
            gt, pred = yolo("gt", key, info), yolo("pred", key, info)
        writer.add(name, info, gt, pred)
    writer.flush()
    report.imported = writer.items
    with transaction.atomic():
        version_finish(version, report.as_dict())
    progress(1.0)
    return report


BOX_COLUMNS = ("version_id", "asset_id", "label_id", "prediction_set_id", "x1", "y1", "x2", "y2", "score", "tags")
WRITE_BATCH = 512


class VersionWriter:
    """Writes a pending version's rows in batches: assets (once by sha1), memberships, boxes."""

    def __init__(self, version: DatasetVersion, report: Report, strategy: str, user_id: int | None) -> None:
        self.version = version
        self.report = report
        self.strategy = strategy
        self.user_id = user_id
        self.mapping: dict[str, int] = {}
        self.resolved: set[str] = set()
        self.pending: list[tuple[str, ImageInfo, RawAnnotation | None, RawAnnotation | None]] = []
        self.prediction_set_id: int | None = None
        self.items = 0
        version_clear_rows(version)  # a retried or redelivered import starts clean

    def resolve(self, names: set[str]) -> None:
        fresh = {n for n in names if n not in self.resolved}
        if fresh:
            self.mapping.update(_resolve_classes(fresh, self.strategy, self.report, self.user_id))
            self.resolved |= fresh

    def add(self, name: str, info: ImageInfo, gt: RawAnnotation | None, pred: RawAnnotation | None) -> None:
        self.pending.append((name, info, gt, pred))
        if len(self.pending) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.resolve({b.label for _n, _i, gt, pred in batch for a in (gt, pred) if a for b in a.boxes})
        if self.prediction_set_id is None and any(pred is not None for *_rest, pred in batch):
            self.prediction_set_id = PredictionSet.objects.create(
                version=self.version, source=PredictionSet.Source.IMPORTED, name="imported"
            ).pk
        now = timezone.now()
        with transaction.atomic():
            insert_assets_ignoring_known(
                [(i.sha1, i.width, i.height, i.size_bytes, i.format, now) for _n, i, *_r in batch]
            )
            ids = dict(Asset.objects.filter(sha1__in=[i.sha1 for _n, i, *_r in batch]).values_list("sha1", "id"))
            bulk_insert(
                "datasets_datasetasset",
                ("version_id", "asset_id", "name", "tags"),
                [(self.version.pk, ids[i.sha1], n, gt.image_tags if gt else {}) for n, i, gt, _p in batch],
            )
            bulk_insert("datasets_box", BOX_COLUMNS, self._boxes(batch, ids))
        self.items += len(batch)

    def _boxes(
        self, batch: list[tuple[str, ImageInfo, RawAnnotation | None, RawAnnotation | None]], ids: dict[str, int]
    ) -> Iterator[tuple[Any, ...]]:
        for _name, info, gt, pred in batch:
            for kind, annotation, pset in (("gt", gt, None), ("pred", pred, self.prediction_set_id)):
                if annotation is not None:
                    yield from _box_rows(
                        self.version.pk, ids[info.sha1], info, annotation, self.mapping, self.report, kind, pset
                    )


def version_clear_rows(version: DatasetVersion) -> None:
    """Delete the rows of a version that is not ready (a failed or interrupted import)."""
    if version.state == DatasetVersion.State.READY:
        return
    with transaction.atomic():
        Box.objects.filter(version=version).delete()
        DatasetAsset.objects.filter(version=version).delete()
        PredictionSet.objects.filter(version=version).delete()


def _box_rows(
    version_id: int,
    asset_id: int,
    info: ImageInfo,
    annotation: RawAnnotation,
    mapping: dict[str, int],
    report: Report,
    kind: str,
    prediction_set_id: int | None,
) -> Iterator[tuple[Any, ...]]:
    clip_annotation(annotation, info.width, info.height)  # VOC boxes were clipped in the worker already
    for reason, count in (annotation.checked or {}).items():
        report.boxes[f"{kind}_{reason}"] += count
    for box in annotation.boxes:
        label_id = mapping.get(" ".join(box.label.split()).lower())
        if label_id is None:
            report.boxes[f"{kind}_unknown_class"] += 1
            continue
        report.boxes[kind] += 1
        score = box.score if prediction_set_id else None
        yield (version_id, asset_id, label_id, prediction_set_id, box.x1, box.y1, box.x2, box.y2, score, box.tags)


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
    transaction.on_commit(functools.partial(_thumbnails_later, version.pk))


def _thumbnails_later(version_id: int) -> None:
    """The thumbnail and quality pass runs as its own task, after the version is ready."""
    from datasets.tasks import make_thumbnails

    make_thumbnails.delay(version_id)
