"""Labelling in Label Studio: send a dataset version, follow progress, bring labels back as new versions.

How images reach Label Studio: each task's image is a URL of this platform, signed for that labelling and
that image (``/labelling/images/<signed>``). Label Studio never copies or stores the bytes, it may run on
another host (no shared folder as its local-files storage would need), a labeller's browser sees only the
images of the task, and the URLs stop working once the labelling ended (plus a grace period).

Progress: Label Studio calls the webhook (``/labelling/hooks/<id>``, with a per-labelling secret header) when
an annotation is created, updated or deleted; a periodic poll (beat) is the fallback and also retries what
failed while the tool was unreachable. Imports are idempotent: each image's annotation is imported once per
change, so importing twice adds nothing.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import uuid
from datetime import timedelta
from typing import Any
from xml.sax.saxutils import quoteattr

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext as _

from core.errors import Conflict, Invalid
from core.models import User
from datasets.classes import resolve_keywords
from datasets.importer import version_finish
from datasets.labelstudio import LabelStudio, ToolError, ToolRefused, ToolUnreachable
from datasets.models import (
    Box,
    DatasetAsset,
    DatasetGroup,
    DatasetVersion,
    LabelClass,
    Labelling,
    LabellingItem,
    LabellingTool,
    PredictionSet,
)
from models_app.models import Task
from models_app.services import task_finish

logger = logging.getLogger(__name__)
State = Task.State
SECRET_HEADER = "X-Ymir-Labelling-Secret"  # noqa: S105 (a header name)
IMAGE_SALT = "ymir.labelling.image"
IMPORT_BATCH = 200
MAX_LABELLERS = 100
MAX_GUIDELINE_BYTES = 256 * 1024
GUIDELINE_SUFFIXES = (".txt", ".md", ".markdown")
FROM_NAME, TO_NAME = "label", "image"


# --- the tool ----------------------------------------------------------------------------------------


def tool_settings() -> tuple[str, str]:
    """The Label Studio URL and token: an admin's settings, else the environment's."""
    row = LabellingTool.objects.filter(pk=1).first()
    if row is not None and row.url:
        return row.url, row.token
    return settings.YMIR_LABEL_STUDIO_URL, settings.YMIR_LABEL_STUDIO_TOKEN


def tool_client() -> LabelStudio:
    url, token = tool_settings()
    if not url or not token:
        raise Invalid(
            _("No labelling tool is configured: an admin sets Label Studio's address and token."),
            code="no_labelling_tool",
        )
    return LabelStudio(url, token, timeout=settings.YMIR_LABEL_STUDIO_TIMEOUT)


def tool_save(*, user: User, url: str, token: str) -> LabellingTool:
    url, token = url.strip(), token.strip()
    existing = LabellingTool.objects.filter(pk=1).first()
    if url and not token and existing is not None:
        token = existing.token  # a blank token field keeps the saved one
    if not url:
        token = ""  # no address: the environment's tool, if any, applies again
    if url and not url.startswith(("http://", "https://")):
        raise Invalid(_("The address starts with http:// or https://."), code="invalid_url")
    if url and not token:
        raise Invalid(_("Give the API token too."), code="invalid_token")
    tool, _created = LabellingTool.objects.update_or_create(
        pk=1, defaults={"url": url, "token": token, "updated_by": user, "updated_at": timezone.now(), "check_ok": None}
    )
    return tool


def tool_check() -> tuple[bool, str]:
    """Try the configured tool: who the token is, and the server's version. Recorded for the settings page."""
    try:
        client = tool_client()
        me = client.whoami()
        version = client.version()
        ok, message = (
            True,
            _("Connected as %(who)s (Label Studio %(version)s).")
            % {
                "who": me.get("email") or me.get("username") or me.get("id"),
                "version": version or "?",
            },
        )
    except Invalid as exc:
        ok, message = False, exc.message
    except ToolUnreachable as exc:
        ok, message = False, _("Label Studio is unreachable: %(error)s") % {"error": exc}
    except ToolRefused as exc:
        ok, message = False, _("Label Studio refused the token: %(error)s") % {"error": exc}
    LabellingTool.objects.update_or_create(
        pk=1, defaults={"checked_at": timezone.now(), "check_ok": ok, "check_message": message}
    )
    return ok, message


# --- create -----------------------------------------------------------------------------------------


def _clean_emails(labellers: list[str]) -> list[str]:
    emails: list[str] = []
    for raw in labellers:
        email = raw.strip().lower()
        if not email:
            continue
        try:
            validate_email(email)
        except ValidationError:
            raise Invalid(
                _("Not an e-mail address: %(email)s") % {"email": raw.strip()}, code="invalid_email"
            ) from None
        if email not in emails:
            emails.append(email)
    if len(emails) > MAX_LABELLERS:
        raise Invalid(_("At most %(n)d labellers.") % {"n": MAX_LABELLERS}, code="invalid_email")
    return emails


def _clean_guideline(name: str, data: bytes | None) -> tuple[str, str]:
    if not data:
        return "", ""
    if not name.lower().endswith(GUIDELINE_SUFFIXES):
        raise Invalid(_("The guideline is a text or Markdown file (.txt, .md)."), code="invalid_guideline")
    if len(data) > MAX_GUIDELINE_BYTES:
        raise Invalid(_("The guideline is at most 256 KiB."), code="invalid_guideline")
    try:
        return name[:200], data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(_("The guideline must be UTF-8 text."), code="invalid_guideline") from None


def _target_labels(class_names: list[str]) -> list[LabelClass]:
    names = [n for n in (" ".join(str(c).split()) for c in class_names) if n]
    if not names:
        raise Invalid(_("Choose at least one class."), code="no_classes")
    found = resolve_keywords(names)
    unknown = [n for n in names if n.lower() not in found]
    if unknown:
        raise Invalid(_("Unknown classes: %(names)s") % {"names": ", ".join(unknown)}, code="unknown_classes")
    ids = list(dict.fromkeys(found[n.lower()] for n in names))
    return list(LabelClass.objects.filter(pk__in=ids).order_by("name"))


def public_base(request_base: str) -> str:
    return (settings.YMIR_PUBLIC_URL or request_base).rstrip("/")


def labelling_create(
    *,
    user: User,
    version: DatasetVersion,
    class_names: list[str],
    output_name: str = "",
    labellers: list[str] | None = None,
    keep_ground_truth: bool = False,
    prediction_set_id: int | None = None,
    guideline_name: str = "",
    guideline: bytes | None = None,
    base_url: str,
) -> Labelling:
    """Record a labelling of ``version`` and send it to Label Studio (a job, retried while unreachable)."""
    project = version.group.project
    if project.owner_id != user.pk:
        raise Invalid(_("You can only label datasets of your own projects."), code="not_your_project")
    if version.state != DatasetVersion.State.READY:
        raise Conflict(_("The dataset is not ready."), code="not_ready")
    if version.asset_count == 0:
        raise Invalid(_("The dataset has no images."), code="empty_dataset")
    tool_client()  # configured at all
    labels = _target_labels(class_names)
    emails = _clean_emails(labellers or [])
    name, text = _clean_guideline(guideline_name, guideline)
    prediction_set = None
    if prediction_set_id:
        prediction_set = PredictionSet.objects.filter(pk=prediction_set_id, version=version).first()
        if prediction_set is None:
            raise Invalid(_("Choose a prediction set of this dataset."), code="invalid_prediction_set")
    output_name = " ".join(output_name.split()) or f"{version.group.name}-labelled"
    if len(output_name) > 100:
        raise Invalid(_("A dataset name has at most 100 characters."), code="invalid_name")
    if DatasetGroup.objects.filter(project=project, name__iexact=output_name).exists():
        raise Conflict(_("This project already has a dataset with that name."), code="dataset_name_taken")
    with transaction.atomic():
        task = Task.objects.create(
            user=user,
            project=project,
            kind=Task.Kind.LABELLING,
            state=State.QUEUED,
            queued_at=timezone.now(),
            parameters={"source": version.pk, "classes": [label.name for label in labels], "output_name": output_name},
        )
        labelling = Labelling.objects.create(
            task=task,
            source=version,
            output_name=output_name,
            labellers=emails,
            keep_ground_truth=keep_ground_truth,
            prediction_set=prediction_set,
            guideline_name=name,
            guideline_text=text,
            public_base=public_base(base_url),
            tool_url=tool_settings()[0].rstrip("/"),
            total=version.asset_count,
        )
        labelling.labels.set(labels)
        items = DatasetAsset.objects.filter(version=version).order_by("id").values_list("asset_id", "name")
        LabellingItem.objects.bulk_create(
            [LabellingItem(labelling=labelling, asset_id=a, name=n) for a, n in items.iterator()], batch_size=2000
        )
        transaction.on_commit(functools.partial(_enqueue, "labelling.push", labelling.pk))
    return labelling


def labelling_relabel(*, user: User, labelling: Labelling, base_url: str) -> Labelling:
    """Send the same version again with the same settings (e.g. after a bad review): a new Label Studio project."""
    taken = DatasetGroup.objects.filter(project=labelling.source.group.project, name__iexact=labelling.output_name)
    name = labelling.output_name
    n = 1
    while taken.exists():
        n += 1
        name = f"{labelling.output_name}-{n}"
        taken = DatasetGroup.objects.filter(project=labelling.source.group.project, name__iexact=name)
    return labelling_create(
        user=user,
        version=labelling.source,
        class_names=[label.name for label in labelling.labels.all()],
        output_name=name,
        labellers=list(labelling.labellers),
        keep_ground_truth=labelling.keep_ground_truth,
        prediction_set_id=labelling.prediction_set_id,
        guideline_name=labelling.guideline_name,
        guideline=labelling.guideline_text.encode() or None,
        base_url=labelling.public_base,
    )


def _enqueue(name: str, labelling_id: int) -> None:
    from datasets import tasks

    {"labelling.push": tasks.labelling_push, "labelling.collect": tasks.labelling_collect}[name].delay(labelling_id)


# --- push to Label Studio -----------------------------------------------------------------------------


def label_config(labels: list[LabelClass]) -> str:
    choices = "".join(f"<Label value={quoteattr(label.name)}/>" for label in labels)
    return (
        f'<View><Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{choices}</RectangleLabels></View>'
    )


def instruction_html(labelling: Labelling, labels: list[LabelClass]) -> str:
    parts = [
        "<p>"
        + html.escape(_("Draw a box around every object of these classes:"))
        + " <b>"
        + html.escape(", ".join(label.name for label in labels))
        + "</b></p>"
    ]
    if labelling.guideline_text:
        parts.append(f"<h3>{html.escape(labelling.guideline_name)}</h3>")
        parts.append(f'<div style="white-space:pre-wrap">{html.escape(labelling.guideline_text)}</div>')
    return "".join(parts)


def image_token(labelling_id: int, sha1: str) -> str:
    return signing.Signer(salt=IMAGE_SALT).sign(f"{labelling_id}.{sha1}")


def image_url(labelling: Labelling, sha1: str) -> str:
    return labelling.public_base + reverse("labelling_image", args=[image_token(labelling.pk, sha1)])


def image_lookup(token: str) -> tuple[Labelling, str] | None:
    """The labelling and image a signed URL names, or None when forged, unknown or expired."""
    try:
        value = signing.Signer(salt=IMAGE_SALT).unsign(token)
    except signing.BadSignature:
        return None
    labelling_id, _dot, sha1 = value.partition(".")
    labelling = Labelling.objects.select_related("task").filter(pk=int(labelling_id)).first()
    if labelling is None or not labelling.items.filter(asset__sha1=sha1).exists():
        return None
    ended = labelling.task.finished_at
    if ended is not None and ended + timedelta(hours=settings.YMIR_LABELLING_URL_GRACE_HOURS) < timezone.now():
        return None
    return labelling, sha1


def webhook_secret(labelling: Labelling) -> str:
    return salted_hmac("ymir.labelling.webhook", f"{labelling.pk}.{labelling.created_at.isoformat()}").hexdigest()


def _region(box: Box, width: int, height: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * box.x1 / width,
            "y": 100.0 * box.y1 / height,
            "width": 100.0 * (box.x2 - box.x1) / width,
            "height": 100.0 * (box.y2 - box.y1) / height,
            "rotation": 0,
            "rectanglelabels": [box.label.name],
        },
    }


def _tasks_for(labelling: Labelling, items: list[LabellingItem], label_ids: set[int]) -> list[dict[str, Any]]:
    asset_ids = [item.asset_id for item in items]
    sources: list[tuple[str, Any]] = []
    if labelling.keep_ground_truth:
        sources.append((_("ground truth"), None))
    if labelling.prediction_set_id:
        sources.append((labelling.prediction_set.name or _("predictions"), labelling.prediction_set_id))  # type: ignore[union-attr]
    boxes: dict[tuple[Any, int], list[Box]] = {}
    for _name, pset in sources:
        query = Box.objects.filter(
            version_id=labelling.source_id, asset_id__in=asset_ids, prediction_set_id=pset, label_id__in=label_ids
        ).select_related("label")
        for box in query:
            boxes.setdefault((pset, box.asset_id), []).append(box)
    tasks = []
    for item in items:
        asset = item.asset
        predictions = []
        for name, pset in sources:
            mine = boxes.get((pset, item.asset_id), [])
            if mine:
                regions = [_region(b, asset.width, asset.height) for b in mine]
                predictions.append({"model_version": str(name), "score": 1.0, "result": regions})
        data = {"image": image_url(labelling, asset.sha1), "ymir_asset": asset.sha1, "ymir_name": item.name}
        tasks.append({"data": data, "predictions": predictions})
    return tasks


def mark_unreachable(labelling_id: int, error: str) -> None:
    now = timezone.now()
    Labelling.objects.filter(pk=labelling_id, unreachable_since__isnull=True).update(unreachable_since=now)
    Labelling.objects.filter(pk=labelling_id).update(last_error=error[:2000])


def _mark_reachable(labelling_id: int) -> None:
    Labelling.objects.filter(pk=labelling_id).update(unreachable_since=None, last_error="", synced_at=timezone.now())


def _map_tasks(client: LabelStudio, labelling: Labelling) -> dict[str, dict[str, Any]]:
    """The Label Studio tasks of the labelling's project by image sha1; records their ids on the items."""
    assert labelling.ls_project_id is not None
    by_sha1: dict[str, dict[str, Any]] = {}
    for task in client.tasks(labelling.ls_project_id, fields="all"):
        sha1 = str((task.get("data") or {}).get("ymir_asset", ""))
        if sha1 and sha1 not in by_sha1:
            by_sha1[sha1] = task
    items = list(labelling.items.select_related("asset"))
    changed = []
    for item in items:
        found = by_sha1.get(item.asset.sha1)
        ls_id = int(found["id"]) if found else None
        labelled = bool(found and _task_labelled(found))
        if item.ls_task_id != ls_id or item.labelled != labelled:
            item.ls_task_id, item.labelled = ls_id, labelled
            changed.append(item)
    LabellingItem.objects.bulk_update(changed, ["ls_task_id", "labelled"], batch_size=2000)
    _recount(labelling.pk)
    return by_sha1


def _task_labelled(task: dict[str, Any]) -> bool:
    return int(task.get("total_annotations") or 0) > 0


def _recount(labelling_id: int) -> None:
    labelled = LabellingItem.objects.filter(labelling_id=labelling_id, labelled=True).count()
    Labelling.objects.filter(pk=labelling_id).update(labelled=labelled, synced_at=timezone.now())
    labelling = Labelling.objects.get(pk=labelling_id)
    if labelling.total:
        Task.objects.filter(pk=labelling.task_id, state=State.RUNNING).update(
            percent=min(1.0, labelled / labelling.total), heartbeat_at=timezone.now()
        )


def labelling_push(labelling_id: int) -> str:
    """Create the Label Studio project (config, instructions, webhook) and import the images not yet there.

    Idempotent: a project already made is reused, images already imported are found by their sha1 and not
    imported twice. Answers "sent", "unreachable" (try later) or "ended"."""
    labelling = (
        Labelling.objects.select_related("task", "source__group__project", "prediction_set")
        .filter(pk=labelling_id)
        .first()
    )
    if labelling is None or labelling.task.is_final:
        return "ended"
    labels = list(labelling.labels.order_by("name"))
    try:
        client = tool_client()
        if labelling.ls_project_id is None:
            source = labelling.source
            title = f"{source.group.project.name} / {source.group.name} v{source.number} #{labelling.pk}"
            created = client.project_create(
                title=title, label_config=label_config(labels), instruction=instruction_html(labelling, labels)
            )
            labelling.ls_project_id = int(created["id"])
            Labelling.objects.filter(pk=labelling.pk).update(ls_project_id=labelling.ls_project_id)
        if labelling.ls_webhook_id is None:
            hook_url = labelling.public_base + reverse("labelling_hook", args=[labelling.pk])
            hook = client.webhook_create(
                project_id=labelling.ls_project_id,
                url=hook_url,
                secret_header=(SECRET_HEADER, webhook_secret(labelling)),
            )
            labelling.ls_webhook_id = int(hook["id"])
            Labelling.objects.filter(pk=labelling.pk).update(ls_webhook_id=labelling.ls_webhook_id)
        present = _map_tasks(client, labelling)
        missing = list(labelling.items.select_related("asset").exclude(asset__sha1__in=list(present)).order_by("id"))
        label_ids = {label.pk for label in labels}
        for start in range(0, len(missing), IMPORT_BATCH):
            batch = missing[start : start + IMPORT_BATCH]
            client.tasks_import(labelling.ls_project_id, _tasks_for(labelling, batch, label_ids))
        if missing:
            _map_tasks(client, labelling)
    except ToolUnreachable as exc:
        mark_unreachable(labelling.pk, str(exc))
        return "unreachable"
    except (ToolRefused, Invalid) as exc:
        message = exc.message if isinstance(exc, Invalid) else str(exc)
        mark_unreachable(labelling.pk, message)
        return "refused"
    _mark_reachable(labelling.pk)
    with transaction.atomic():
        Task.objects.filter(pk=labelling.task_id, state=State.QUEUED).update(
            state=State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
        )
    _recount(labelling.pk)
    return "sent"


# --- follow -------------------------------------------------------------------------------------------


def webhook_receive(labelling_id: int, secret: str, payload: dict[str, Any]) -> str:
    """A Label Studio webhook: "refused" without the labelling's secret; "ignored" (logged) for a project that
    is not this labelling's or a labelling that ended; else the image's labelled state is updated at once."""
    labelling = Labelling.objects.select_related("task").filter(pk=labelling_id).first()
    if labelling is None:
        logger.warning("labelling webhook for unknown labelling %s ignored", labelling_id)
        return "ignored"
    if not secret or not constant_time_compare(secret, webhook_secret(labelling)):
        logger.warning("labelling webhook for labelling %s without its secret refused", labelling_id)
        return "refused"
    project = payload.get("project")
    project_id = project.get("id") if isinstance(project, dict) else project
    if labelling.ls_project_id is None or str(project_id) != str(labelling.ls_project_id):
        logger.warning("labelling webhook for project %r on labelling %s ignored", project_id, labelling_id)
        return "ignored"
    if labelling.task.is_final:
        return "ignored"
    action = str(payload.get("action", ""))
    Labelling.objects.filter(pk=labelling.pk).update(last_event_at=timezone.now())
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        task = payload.get("task") or {}
        annotation = payload.get("annotation") or {}
        task_id = task.get("id") or annotation.get("task")
        if task_id is None:
            return "ignored"
        # the annotation just saved counts even where the task's counters in the payload lag behind
        labelled = not annotation.get("was_cancelled") or _task_labelled(task)
        matched = LabellingItem.objects.filter(labelling=labelling, ls_task_id=int(task_id)).update(labelled=labelled)
        sha1 = str((task.get("data") or {}).get("ymir_asset", ""))
        if not matched and sha1:  # an event before the push mapped its tasks: the image names itself
            LabellingItem.objects.filter(labelling=labelling, asset__sha1=sha1).update(
                labelled=labelled, ls_task_id=int(task_id)
            )
        _recount(labelling.pk)
        labelling.refresh_from_db()
        if labelling.labelled >= labelling.total > 0:
            transaction.on_commit(functools.partial(_enqueue, "labelling.collect", labelling.pk))
    elif action == "ANNOTATIONS_DELETED":
        transaction.on_commit(functools.partial(_enqueue_sync, labelling.pk))
    return "ok"


def _enqueue_sync(labelling_id: int) -> None:
    from datasets.tasks import labelling_sync

    labelling_sync.delay(labelling_id)


def labelling_sync(labelling_id: int) -> str:
    """The poll: push what is not sent yet, refresh the labelled state of every image from Label Studio,
    archive a cancelled labelling's project, and import on completion. "ok", "unreachable" or "ended"."""
    labelling = Labelling.objects.select_related("task").filter(pk=labelling_id).first()
    if labelling is None:
        return "ended"
    if labelling.task.is_final:  # a cancelled one's project is archived; a done one loses its webhook
        return _archive(labelling) if labelling.ls_webhook_id is not None else "ended"
    if labelling.task.state == State.QUEUED or labelling.items.filter(ls_task_id__isnull=True).exists():
        outcome = labelling_push(labelling_id)
        return "ok" if outcome == "sent" else outcome
    try:
        _map_tasks(tool_client(), labelling)
    except ToolUnreachable as exc:
        mark_unreachable(labelling.pk, str(exc))
        return "unreachable"
    except (ToolRefused, Invalid) as exc:
        mark_unreachable(labelling.pk, exc.message if isinstance(exc, Invalid) else str(exc))
        return "refused"
    _mark_reachable(labelling.pk)
    labelling.refresh_from_db()
    complete = labelling.labelled >= labelling.total > 0
    if complete or labelling.collect_requested:
        try:
            labelling_collect(labelling.pk, finish=complete)
        except ToolUnreachable as exc:
            mark_unreachable(labelling.pk, str(exc))
            Labelling.objects.filter(pk=labelling.pk).update(collect_requested=True)
            return "unreachable"
    return "ok"


def labellings_poll() -> int:
    """Every open labelling (and cancelled ones still to archive) once; answers how many were looked at."""
    open_ids = Labelling.objects.filter(task__state__in=(State.QUEUED, State.RUNNING)).values_list("id", flat=True)
    to_archive = Labelling.objects.filter(task__state__in=Task.FINAL_STATES, ls_webhook_id__isnull=False).values_list(
        "id", flat=True
    )
    ids = [*open_ids, *to_archive]
    for labelling_id in ids:
        try:
            labelling_sync(labelling_id)
        except Exception:  # one labelling's trouble must not stop the others
            logger.exception("labelling %s: poll failed", labelling_id)
    return len(ids)


# --- import -----------------------------------------------------------------------------------------


def ls_box(value: dict[str, Any], width: int, height: int) -> tuple[tuple[float, float, float, float], bool] | None:
    """A Label Studio rectangle (percent of the image, rotated about its top-left corner) as pixels, clipped to
    the image; None when nothing of it lies inside. The flag says whether it was clipped."""
    try:
        x, y = float(value["x"]) * width / 100, float(value["y"]) * height / 100
        w, h = float(value["width"]) * width / 100, float(value["height"]) * height / 100
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h, angle)):
        return None
    cos, sin = math.cos(angle), math.sin(angle)
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        return None
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return (cx1, cy1, cx2, cy2), clipped


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(done, key=lambda a: (str(a.get("updated_at") or ""), int(a.get("id") or 0))) if done else None


def labelling_collect(labelling_id: int, *, finish: bool = False) -> DatasetVersion | None:
    """Bring back what is labelled: a new version of the output dataset holding every labelled image with the
    labellers' boxes as ground truth (the latest annotation of each image), when anything changed since the
    last import; None when nothing did. With ``finish`` (all labelled) the labelling task ends done.

    Raises ToolUnreachable when Label Studio cannot be reached (nothing is written)."""
    Labelling.objects.filter(pk=labelling_id).update(collect_requested=False)
    labelling = Labelling.objects.select_related("task", "source__group").get(pk=labelling_id)
    if labelling.ls_project_id is None:
        raise Conflict(_("The images have not reached Label Studio yet."), code="not_sent")
    exported = tool_client().export(labelling.ls_project_id)
    targets = {label.pk: label for label in labelling.labels.all()}
    keywords = resolve_keywords(
        {
            str(lab)
            for task in exported
            for a in task.get("annotations") or []
            for r in a.get("result") or []
            for lab in (r.get("value") or {}).get("rectanglelabels") or []
        }
    )
    by_sha1 = {str((t.get("data") or {}).get("ymir_asset", "")): t for t in exported}
    with transaction.atomic():
        labelling = (
            Labelling.objects.select_for_update(of=("self",))
            .select_related("task", "source__group")
            .get(pk=labelling_id)
        )
        items = list(labelling.items.select_related("asset").order_by("id"))
        report: dict[str, Any] = {
            "operation": "labelling",
            "labelling": labelling.pk,
            "skipped": [],
            "clipped_boxes": 0,
            "labels_not_in_targets": {},
        }
        chosen: list[tuple[LabellingItem, dict[str, Any], str]] = []
        changed = 0
        for item in items:
            task = by_sha1.get(item.asset.sha1)
            annotation = _latest_annotation(task) if task else None
            if annotation is None:
                skipped = task and any(a.get("was_cancelled") for a in task.get("annotations") or [])
                reason = _("skipped by the labeller") if skipped else _("not labelled yet")
                report["skipped"].append({"file": item.name or item.asset.sha1, "reason": reason})
                continue
            key = f"{annotation.get('id')}:{annotation.get('updated_at')}"
            changed += key != item.imported_key
            chosen.append((item, annotation, key))
        if not changed:
            if finish:
                _finish(labelling)
            return None
        boxes: list[Box] = []
        for item, annotation, _key in chosen:
            asset = item.asset
            for region in annotation.get("result") or []:
                if region.get("type") != "rectanglelabels":
                    continue
                value = region.get("value") or {}
                names = value.get("rectanglelabels") or []
                label_id = keywords.get(" ".join(str(names[0]).split()).lower()) if names else None
                if label_id not in targets:
                    shown = str(names[0]) if names else "?"
                    report["labels_not_in_targets"][shown] = report["labels_not_in_targets"].get(shown, 0) + 1
                    continue
                converted = ls_box(value, asset.width, asset.height)
                if converted is None:
                    report["skipped"].append({"file": item.name or asset.sha1, "reason": _("a box outside the image")})
                    continue
                (x1, y1, x2, y2), clipped = converted
                report["clipped_boxes"] += int(clipped)
                boxes.append(Box(asset=asset, label_id=label_id, x1=x1, y1=y1, x2=x2, y2=y2))
        version = _new_output_version(labelling)
        source_items = {
            d.asset_id: d
            for d in DatasetAsset.objects.filter(
                version_id=labelling.source_id, asset_id__in=[i.asset_id for i, _a, _k in chosen]
            )
        }
        DatasetAsset.objects.bulk_create(
            [
                DatasetAsset(
                    version=version,
                    asset_id=item.asset_id,
                    name=item.name,
                    tags=source_items[item.asset_id].tags if item.asset_id in source_items else {},
                )
                for item, _a, _k in chosen
            ],
            batch_size=2000,
        )
        for box in boxes:
            box.version = version
        Box.objects.bulk_create(boxes, batch_size=2000)
        for item, _a, key in chosen:
            item.imported_key = key
        LabellingItem.objects.bulk_update([i for i, _a, _k in chosen], ["imported_key"], batch_size=2000)
        report.update({"images": len(chosen), "new_or_changed": changed, "skipped_count": len(report["skipped"])})
        version_finish(version, report)
        if finish:
            _finish(labelling)
    return version


def _new_output_version(labelling: Labelling) -> DatasetVersion:
    group = labelling.output_group
    previous = None
    if group is None:
        from models_app.landing import _free_group_name

        project_id = labelling.source.group.project_id
        group = DatasetGroup.objects.create(
            project_id=project_id, name=_free_group_name(project_id, labelling.output_name)
        )
        Labelling.objects.filter(pk=labelling.pk).update(output_group=group)
        labelling.output_group = group
    else:
        previous = group.versions.order_by("-number").first()
    number = (group.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = DatasetVersion.objects.create(
        group=group, number=number, task=labelling.task, parameters={"labelling": labelling.pk}
    )
    version.parents.set([labelling.source_id, *([previous.pk] if previous else [])])
    return version


def _finish(labelling: Labelling) -> None:
    task_finish(labelling.task_id, state=State.DONE)
    transaction.on_commit(functools.partial(_enqueue_sync, labelling.pk))  # removes the webhook


def collect_request(labelling: Labelling) -> None:
    if labelling.task.is_final:
        raise Conflict(_("This labelling has ended."), code="ended")
    if labelling.ls_project_id is None:
        raise Conflict(_("The images have not reached Label Studio yet."), code="not_sent")
    Labelling.objects.filter(pk=labelling.pk).update(collect_requested=True)
    transaction.on_commit(functools.partial(_enqueue, "labelling.collect", labelling.pk))


# --- cancel -------------------------------------------------------------------------------------------


def labelling_cancel(labelling: Labelling) -> bool:
    """Stop the labelling at once; its Label Studio project is archived (webhook removed, title marked, the
    annotations kept there) now, or by the poll when the tool is unreachable."""
    if not task_finish(
        labelling.task_id, state=State.TERMINATED, error_code="cancelled", error_message=_("Cancelled by the user.")
    ):
        return False
    labelling.task.refresh_from_db()
    _archive(labelling)
    return True


def _archive(labelling: Labelling) -> str:
    if labelling.ls_project_id is None:
        Labelling.objects.filter(pk=labelling.pk).update(ls_webhook_id=None)
        return "ended"
    try:
        client = tool_client()
        if labelling.ls_webhook_id is not None:
            client.webhook_delete(labelling.ls_webhook_id)
        project = client.project(labelling.ls_project_id)
        title = str(project.get("title", ""))
        mark = "[" + _("archived") + "] "
        if labelling.task.state == State.TERMINATED and not title.startswith(mark):
            client.project_update(labelling.ls_project_id, title=(mark + title)[:50])
    except (ToolError, Invalid) as exc:
        mark_unreachable(labelling.pk, str(exc))
        return "unreachable"
    Labelling.objects.filter(pk=labelling.pk).update(ls_webhook_id=None)
    _mark_reachable(labelling.pk)
    return "ended"


def tool_link(labelling: Labelling) -> str:
    if labelling.ls_project_id is None:
        return ""
    return f"{labelling.tool_url}/projects/{labelling.ls_project_id}/data"


def labelling_invite(labelling: Labelling) -> dict[str, Any]:
    """The invite link for labellers not yet in Label Studio, and who already is (best effort)."""
    try:
        client = tool_client()
        members = client.member_emails()
        return {
            "invite_url": client.invite_url(),
            "members": [e for e in labelling.labellers if e in members],
            "to_invite": [e for e in labelling.labellers if e not in members],
        }
    except (ToolError, Invalid):
        return {"invite_url": "", "members": [], "to_invite": list(labelling.labellers)}
