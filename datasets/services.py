"""Dataset writes: start imports (upload, server path, copy), retry, and copying versions set-wise in SQL."""

from __future__ import annotations

import functools
import logging
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from core.models import User
from core.netguard import check_url, fetch
from core.workspace import workspace_root
from datasets.archive import FolderSource, ZipSource, sharing_path
from datasets.importer import run_import, version_finish
from datasets.models import DatasetAsset, DatasetGroup, DatasetVersion
from datasets.selectors import version_visible_to
from models_app.models import Task
from models_app.services import task_begin, task_create, task_finish, task_progress
from projects.models import Project

logger = logging.getLogger(__name__)

FORMATS = ("voc", "coco", "yolo")
BOX_INSERT = (
    "INSERT INTO datasets_box (version_id, asset_id, label_id, prediction_set_id, x1, y1, x2, y2, score, tags) "
)
UNKNOWN_CLASS_STRATEGIES = ("stop", "ignore", "add")


def _upload_path() -> Path:
    path = workspace_root() / "uploads" / f"{uuid.uuid4().hex}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def upload_save(stream: IO[bytes]) -> Path:
    """Stream an uploaded file into the workspace's uploads folder."""
    path = _upload_path()
    with path.open("wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    return path


def upload_adopt(temporary: Path) -> Path:
    """Move an upload Django already streamed to a temporary file into the uploads folder (no copy)."""
    path = _upload_path()
    shutil.move(str(temporary), path)
    return path


def dataset_import_start(
    *,
    user: User,
    project: Project,
    name: str,
    description: str = "",
    fmt: str = "voc",
    unknown_classes: str = "stop",
    upload: Path | None = None,
    path: str | None = None,
    copy_of: int | None = None,
    url: str | None = None,
) -> DatasetVersion:
    name = name.strip()
    if not name:
        raise Invalid(_("A dataset needs a name."), code="invalid_name")
    if fmt not in FORMATS:
        raise Invalid(_("Unknown format: choose voc, coco or yolo."), code="invalid_format")
    if unknown_classes not in UNKNOWN_CLASS_STRATEGIES:
        raise Invalid(_("Unknown classes strategy: choose stop, ignore or add."), code="invalid_strategy")
    if sum(x is not None for x in (upload, path, copy_of, url)) != 1:
        raise Invalid(
            _("Give exactly one source: a zip file, a URL, a server path or a dataset to copy."), code="invalid_source"
        )
    source: dict[str, object]
    if url is not None:
        check_url(url)  # refuse at once; checked again, hop by hop, when the task downloads it
        source = {"url": url}
    elif path is not None:
        sharing_path(path)  # refuse at once; checked again when the task runs
        source = {"path": path}
    elif copy_of is not None:
        parent = version_visible_to(user, copy_of)
        if parent.state != DatasetVersion.State.READY:
            raise Conflict(_("Only a ready dataset can be copied."), code="not_ready")
        source = {"dataset_id": parent.pk}
    else:
        source = {"upload": str(upload)}
    parameters = {"format": fmt, "unknown_classes": unknown_classes, "source": source}
    try:
        with transaction.atomic():
            group = DatasetGroup.objects.create(project=project, name=name, description=description)
            task = task_create(
                user=user,
                kind=Task.Kind.COPY if copy_of else Task.Kind.IMPORT,
                project=project,
                parameters=parameters,
            )
            version = DatasetVersion.objects.create(group=group, number=1, task=task, parameters=parameters)
            if copy_of is not None:
                version.parents.add(copy_of)
            transaction.on_commit(lambda: _enqueue(task.pk))
    except IntegrityError as exc:
        raise Conflict(_("This project already has a dataset with that name."), code="dataset_name_taken") from exc
    return version


def _enqueue(task_id: int) -> None:
    from datasets.tasks import import_dataset

    import_dataset.delay(task_id)


def dataset_import_retry(*, user: User, version: DatasetVersion) -> DatasetVersion:
    if version.state != DatasetVersion.State.ERROR:
        raise Conflict(_("Only a failed import can be retried."), code="not_failed")
    with transaction.atomic():
        task = task_create(
            user=user, kind=Task.Kind.IMPORT, project=version.group.project, parameters=version.parameters
        )
        version.task = task
        version.state = DatasetVersion.State.PENDING
        version.report = {}
        version.save(update_fields=["task", "state", "report"])
        transaction.on_commit(lambda: _enqueue(task.pk))
    return version


def import_execute(task_id: int) -> None:
    """The body of the import task: idempotent, safe to run again on redelivery."""
    task = task_begin(task_id)
    if task is None:
        return
    version = DatasetVersion.objects.filter(task_id=task_id).first()
    if version is None:
        task_finish(task_id, state=Task.State.ERROR, error_code="no_version", error_message="No dataset for this task.")
        return
    if version.state == DatasetVersion.State.READY:  # finished before a crash lost the acknowledgement
        task_finish(task_id, state=Task.State.DONE)
        return
    params = version.parameters
    source_spec = dict(params["source"])
    made_here = "demo" in source_spec or "url" in source_spec  # a zip this task made: removed whatever happens
    try:
        if "dataset_id" in source_spec:
            with transaction.atomic():
                version_copy_rows(source_id=int(source_spec["dataset_id"]), target=version)
                version_finish(version, {"copied_from": source_spec["dataset_id"]})
        else:
            if "demo" in source_spec:
                source_spec["upload"] = str(_demo_zip(source_spec["demo"]))
            if "url" in source_spec:
                source_spec["upload"] = str(_download(str(source_spec["url"])))
            if "path" in source_spec:
                reader: ZipSource | FolderSource = FolderSource(sharing_path(str(source_spec["path"])))
            else:
                reader = ZipSource(Path(str(source_spec["upload"])))
            try:
                report = run_import(
                    version=version,
                    source=reader,
                    fmt=params["format"],
                    unknown_classes=params["unknown_classes"],
                    user_id=task.user_id,
                    progress=lambda p: task_progress(task_id, p),
                )
            finally:
                reader.close()
            logger.info("import %s: %s images", version.pk, report.imported)
    except ServiceError as exc:
        _fail(version, task_id, exc.code, exc.message, exc.details)
        return
    except Exception as exc:
        logger.exception("import task %s failed", task_id)
        _fail(
            version,
            task_id,
            "internal_error",
            _("The import failed unexpectedly: %(why)s") % {"why": type(exc).__name__},
            None,
        )
        return
    finally:
        if made_here and "upload" in source_spec:
            Path(str(source_spec["upload"])).unlink(missing_ok=True)
    task_finish(task_id, state=Task.State.DONE)
    if "upload" in source_spec:  # an uploaded zip is kept after a failure, for a retry; removed once imported
        Path(str(source_spec["upload"])).unlink(missing_ok=True)


def _download(url: str) -> Path:
    path = _upload_path()
    try:
        with path.open("wb") as out:
            for chunk in fetch(url, max_bytes=settings.YMIR_IMPORT_MAX_DOWNLOAD_BYTES):
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _demo_zip(spec: dict[str, Any]) -> Path:
    from datasets.demo import write_voc_zip

    return write_voc_zip(
        _upload_path(),
        count=spec["count"],
        seed=spec["seed"],
        start=spec["start"],
        with_gt=bool(spec["gt"]),
        scene=spec.get("scene", "lab"),
        tail=bool(spec.get("tail")),
    )


DEMO_SEED = 2024


def demo_project_start(*, user: User) -> Project:
    """The demo project of the seed-002 walk-through: training, test and mining sets of Lego-like images."""
    train, test, mining = ([*settings.YMIR_DEMO_SIZES, 0, 0, 0])[:3]
    with transaction.atomic():
        project = Project.objects.create(
            owner=user,
            name=_("Lego demo"),
            description=_("A synthetic Lego-like detection set: 8 classes of bricks, plates, tiles, beams and slopes."),
        )
        demo_classes_ensure(user)
        start = 0
        for name, count, gt in (("lego-train", train, True), ("lego-test", test, True), ("lego-mining", mining, False)):
            if count > 0:
                demo_import_start(
                    user=user, project=project, name=name, count=count, seed=DEMO_SEED, start=start, gt=gt
                )
            start += count
    return project


def demo_classes_ensure(user: User) -> None:
    """The Lego-like classes, in the registry."""
    from datasets.classes import class_create, resolve_keywords
    from datasets.demo import CLASSES

    for name in CLASSES:
        if not resolve_keywords([name]):
            class_create(user=user, name=name)


def demo_import_start(
    *,
    user: User,
    project: Project,
    name: str,
    count: int,
    seed: int,
    start: int,
    gt: bool = True,
    scene: str = "lab",
    tail: bool = False,
) -> DatasetVersion:
    """A dataset of ``count`` synthetic Lego-like images (the classes must exist), imported by a task;
    ``scene`` is one of ``datasets.demo.SCENES``; ``tail``: long-tailed classes (``datasets.demo.TAIL_WEIGHTS``)."""
    demo: dict[str, Any] = {"count": count, "seed": seed, "start": start, "gt": int(gt), "scene": scene}
    if tail:
        demo["tail"] = 1
    parameters = {"format": "voc", "unknown_classes": "stop", "source": {"demo": demo}}
    with transaction.atomic():
        group = DatasetGroup.objects.create(project=project, name=name)
        task = task_create(user=user, kind=Task.Kind.IMPORT, project=project, parameters=parameters)
        version = DatasetVersion.objects.create(group=group, number=1, task=task, parameters=parameters)
        transaction.on_commit(functools.partial(_enqueue, task.pk))
    return version


def _fail(version: DatasetVersion, task_id: int, code: str, message: str, details: object) -> None:
    from datasets.importer import version_clear_rows

    version_clear_rows(version)
    version.state = DatasetVersion.State.ERROR
    version.report = {"error": {"code": code, "message": message, "details": details}}
    version.save(update_fields=["state", "report"])
    task_finish(task_id, state=Task.State.ERROR, error_code=code, error_message=message)


def version_copy_rows(*, source_id: int, target: DatasetVersion) -> None:
    """Copy memberships, prediction sets and boxes of a version in SQL: no image bytes, no Python loops."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO datasets_datasetasset (version_id, asset_id, name, tags) "
            "SELECT %s, asset_id, name, tags FROM datasets_datasetasset WHERE version_id = %s",
            [target.pk, source_id],
        )
        cursor.execute(
            "SELECT id, source, name, model_info, created_at FROM datasets_predictionset WHERE version_id = %s",
            [source_id],
        )
        pset_map: dict[int, int] = {}
        from datasets.models import PredictionSet

        for old_id, src, pname, info, created in cursor.fetchall():
            new = PredictionSet.objects.create(
                version=target, source=src, name=pname, model_info=info or {}, created_at=created
            )
            pset_map[old_id] = new.pk
        cursor.execute(
            "INSERT INTO datasets_box"
            " (version_id, asset_id, label_id, prediction_set_id, x1, y1, x2, y2, score, tags) "
            "SELECT %s, asset_id, label_id, NULL, x1, y1, x2, y2, score, tags FROM datasets_box "
            "WHERE version_id = %s AND prediction_set_id IS NULL",
            [target.pk, source_id],
        )
        for old_id, new_id in pset_map.items():
            cursor.execute(
                "INSERT INTO datasets_box"
                " (version_id, asset_id, label_id, prediction_set_id, x1, y1, x2, y2, score, tags) "
                "SELECT %s, asset_id, label_id, %s, x1, y1, x2, y2, score, tags FROM datasets_box "
                "WHERE version_id = %s AND prediction_set_id = %s",
                [target.pk, new_id, source_id, old_id],
            )


def version_get_for_retry(user: User, version_id: int) -> DatasetVersion:
    version = (
        DatasetVersion.objects.select_related("group__project")
        .filter(pk=version_id, group__project__owner=user)
        .first()
    )
    if version is None:
        raise NotFound(_("Not found."))
    return version


def version_export(*, version: DatasetVersion, fmt: str) -> IO[bytes]:
    """Write the export to the workspace and hand back an open file that is already unlinked (no leftovers)."""
    from datasets.export import export_coco, export_voc

    if version.state != DatasetVersion.State.READY:
        raise Conflict(_("Only a ready dataset can be exported."), code="not_ready")
    if fmt not in ("voc", "coco"):
        raise Invalid(_("Export formats: voc or coco."), code="invalid_format")
    path = workspace_root() / "uploads" / f"export-{uuid.uuid4().hex}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        (export_voc if fmt == "voc" else export_coco)(version, path)
        handle = path.open("rb")
    finally:
        path.unlink(missing_ok=True)
    return handle


def operation_run(task_id: int) -> None:
    """The body of a set-operation task: all outputs become ready together, or all end in error."""
    from datasets.operations import operation_execute

    task = task_begin(task_id)
    if task is None:
        return
    outputs = list(DatasetVersion.objects.filter(task_id=task_id).order_by("id"))
    if outputs and all(v.state == DatasetVersion.State.READY for v in outputs):
        task_finish(task_id, state=Task.State.DONE)
        return
    try:
        operation_execute(task, outputs)
    except ServiceError as exc:
        for version in outputs:
            _fail(version, task_id, exc.code, exc.message, exc.details)
        return
    except Exception as exc:
        logger.exception("operation task %s failed", task_id)
        for version in outputs:
            _fail(
                version,
                task_id,
                "internal_error",
                _("The operation failed: %(why)s") % {"why": type(exc).__name__},
                None,
            )
        return
    task_finish(task_id, state=Task.State.DONE)


def versions_fail_for_task(task_id: int, code: str, message: str) -> None:
    """The versions a lost task was making end in error, with no rows left behind."""
    for version in DatasetVersion.objects.filter(task_id=task_id, state=DatasetVersion.State.PENDING):
        _fail(version, task_id, code, message, None)


def thumbnails_make(version_id: int) -> int:
    """The follow-up pass for a version's images that have no thumbnail yet; answers how many were made."""
    from datasets.ingest import run_parallel, worker_count
    from datasets.models import Asset
    from datasets.thumbs import thumbnail_chunk

    todo = list(
        Asset.objects.filter(
            has_thumbnail=False,
            decode_failed=False,
            id__in=DatasetAsset.objects.filter(version_id=version_id).values("asset_id"),
        ).values_list("id", "sha1")
    )
    made = 0
    batch: list[tuple[int, float | None]] = []
    fixed = (str(workspace_root()), settings.YMIR_MAX_IMAGE_PIXELS)
    for result in run_parallel(thumbnail_chunk, fixed, todo, worker_count(settings.YMIR_IMPORT_WORKERS)):
        batch.append(result)
        if len(batch) >= 500:
            made += _save_thumbnail_results(batch)
            batch = []
    return made + _save_thumbnail_results(batch)


def _save_thumbnail_results(batch: list[tuple[int, float | None]]) -> int:
    with connection.cursor() as cursor:
        good = [(q, i) for i, q in batch if q is not None]
        cursor.executemany("UPDATE datasets_asset SET has_thumbnail = TRUE, quality = %s WHERE id = %s", good)
        bad = [(i,) for i, q in batch if q is None]
        cursor.executemany("UPDATE datasets_asset SET decode_failed = TRUE WHERE id = %s", bad)
    return len(good)


def dataset_delete(*, user: User, version: DatasetVersion) -> None:
    """Delete a version (its rows; image bytes stay in the store). Refused while a task makes or reads it."""
    if version.group.project.owner_id != user.pk:
        raise Forbidden(_("Only the project's owner can delete its datasets."))
    if version.state == DatasetVersion.State.PENDING:
        raise Conflict(_("This dataset is still being made; wait for its task to end."), code="in_use")
    if version.children.filter(state=DatasetVersion.State.PENDING).exists():
        raise Conflict(_("A task is making a new dataset from this one."), code="in_use")
    if version.trained_models.exists() or version.validated_models.exists():
        raise Conflict(_("A model was trained or validated on this dataset; delete the model first."), code="in_use")
    if _read_by_running_task(version.pk):
        raise Conflict(_("A running task reads this dataset."), code="in_use")
    if version.labellings.exclude(task__state__in=Task.FINAL_STATES).exists():
        raise Conflict(_("This dataset is being labelled; cancel the labelling first."), code="in_use")
    from iterations.services import versions_in_use

    if versions_in_use(version.pk):
        raise Conflict(_("An iteration uses this dataset."), code="in_use")
    group = version.group
    with transaction.atomic():
        version.labellings.all().delete()  # ended labellings of it (their tasks stay in the task list)
        version.delete()
        if not group.versions.exists():
            group.delete()


def _read_by_running_task(version_id: int) -> bool:
    running = Task.objects.exclude(state__in=Task.FINAL_STATES).filter(image__isnull=False)
    return any(
        version_id in (t.get("train"), t.get("val"), t.get("candidates"))
        for t in running.values_list("parameters", flat=True)
    )


def dataset_set_public(*, user: User, version: DatasetVersion, public: bool) -> DatasetVersion:
    if version.group.project.owner_id != user.pk:
        raise Forbidden(_("Only the project's owner can publish its datasets."))
    if public and version.state != DatasetVersion.State.READY:
        raise Conflict(_("Only a ready dataset can be made public."), code="not_ready")
    version.is_public = public
    version.save(update_fields=["is_public"])
    return version
