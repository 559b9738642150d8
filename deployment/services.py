"""Publishing models as algorithms, serving predictions, review, devices, and field images.

Serving: ``predict`` runs in whichever process answers ``POST /api/v1/algorithms/{id}/predict`` — the web
process, or the ``deployment`` service of docker-compose (the same code behind its own gunicorn, so that
inference load does not slow the pages). onnxruntime sessions are loaded once per process and reused
(``models_app.onnx_predict``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid, NotFound, Throttled
from core.models import User
from core.workspace import workspace_root
from datasets.models import Asset, DatasetAsset, DatasetGroup, DatasetVersion
from datasets.store import ImageRejected, asset_path, inspect_image, store_bytes
from deployment.models import Algorithm, Assignment, Device, FieldImage
from models_app import landing, onnx_predict
from models_app.models import ModelStage

logger = logging.getLogger(__name__)
Visibility = Algorithm.Visibility


# --- publish ---------------------------------------------------------------------------------------------


def onnx_of(stage: ModelStage) -> Path | None:
    folder = landing.model_dir(stage.version_id)
    for name in stage.files:
        if str(name).endswith(".onnx") and (folder / name).is_file():
            return folder / name
    return None


def algorithm_path(algorithm: Algorithm, quantized: bool | None = None) -> Path:
    use_int8 = algorithm.quantized if quantized is None else quantized
    return workspace_root() / (algorithm.file if use_int8 else (algorithm.float_file or algorithm.file))


def algorithm_publish(
    *,
    user: User,
    stage: ModelStage,
    name: str = "",
    description: str = "",
    score_threshold: float = 0.25,
    quantize: bool = False,
) -> Algorithm:
    """A model stage as an algorithm in "My algorithms": its ONNX graph (checked by loading it), class names,
    input size, threshold, and a card of what the platform knows (data, its own metrics, the image)."""
    version = stage.version
    if version.group.project.owner_id != user.pk:
        raise NotFound(_("No such model."))
    source = onnx_of(stage)
    if source is None:
        raise Invalid(_("This stage has no ONNX graph to serve."), code="no_onnx")
    try:
        loaded = onnx_predict.load(source)
    except onnx_predict.PredictError as exc:
        raise Invalid(str(exc), code="unservable") from None
    if not 0 <= score_threshold <= 1:
        raise Invalid(_("The score threshold must be between 0 and 1."), code="invalid_score_threshold")
    card = {
        "model": str(version),
        "stage": stage.name,
        "image": version.image.name if version.image else "",
        "training_set": str(version.train_version) if version.train_version else "",
        "training_images": version.train_version.asset_count if version.train_version else None,
        "validation_set": str(version.val_version) if version.val_version else "",
        "metrics": {k: stage.metrics.get(k) for k in ("AP", "AP50", "AP75") if k in stage.metrics},
        "providers": loaded.providers,
    }
    with transaction.atomic():
        algorithm = Algorithm.objects.create(
            owner=user,
            project=version.group.project,
            stage=stage,
            name=" ".join(name.split())[:100] or f"{version} {stage.name}",
            description=description[:2000],
            file="",
            class_names=loaded.class_names,
            image_size=loaded.image_size,
            score_threshold=score_threshold,
            card=card,
            quantization={"state": "queued"} if quantize else {},
        )
        relative = Path("algorithms") / str(algorithm.pk) / "model.onnx"
        target = workspace_root() / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        algorithm.file = algorithm.float_file = str(relative)
        algorithm.save(update_fields=["file", "float_file"])
        if quantize:
            transaction.on_commit(lambda: _enqueue_quantize(algorithm.pk))
    return algorithm


def _enqueue_quantize(algorithm_id: int) -> None:
    from deployment.tasks import quantize

    quantize.delay(algorithm_id)


def quantize_and_compare(algorithm_id: int) -> dict[str, Any]:
    """Dynamic int8 quantisation (onnxruntime's quantiser), and the mAP of both graphs on the validation set,
    measured by the platform, so the owner decides which to serve."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    algorithm = Algorithm.objects.select_related("stage__version__val_version").get(pk=algorithm_id)
    Algorithm.objects.filter(pk=algorithm_id).update(quantization={"state": "running"})
    float_path = workspace_root() / algorithm.float_file
    int8_relative = Path(algorithm.float_file).with_name("model.int8.onnx")
    int8_path = workspace_root() / int8_relative
    try:
        quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
        onnx_predict.load(int8_path)
    except Exception as exc:  # the quantiser and onnxruntime raise their own types
        failed = {"state": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        Algorithm.objects.filter(pk=algorithm_id).update(quantization=failed)
        return failed
    report: dict[str, Any] = {
        "state": "done",
        "file": str(int8_relative),
        "float_bytes": float_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
    }
    val = algorithm.stage.version.val_version if algorithm.stage else None
    if val is not None and val.gt_box_count:
        report["float"] = evaluate_graph(float_path, val)
        report["int8"] = evaluate_graph(int8_path, val)
        report["validation_set"] = str(val)
    Algorithm.objects.filter(pk=algorithm_id).update(quantization=report)
    return report


def evaluate_graph(path: Path, version: DatasetVersion, limit: int = 500) -> dict[str, Any]:
    """COCO numbers of an ONNX graph on (up to ``limit`` images of) a dataset, with the platform's evaluator."""
    from datasets.classes import resolve_keywords
    from models_app import evaluator
    from models_app.evaluations import _boxes, load_version

    items = list(
        DatasetAsset.objects.filter(version=version).order_by("id").values_list("asset_id", "asset__sha1")[:limit]
    )
    loaded = load_version(version, only_assets=[a for a, _s in items])
    names = onnx_predict.load(path).class_names
    label_of = resolve_keywords(names)
    rows: list[tuple[float, ...]] = []
    scores: list[float] = []
    started = time.perf_counter()
    for asset_id, sha1 in items:
        image = onnx_predict.decode_image(asset_path(sha1).read_bytes())
        found, _seconds = onnx_predict.predict(path, [image], score_threshold=0.001, max_boxes=100)
        for box in found[0]:
            label = label_of.get(box["class_name"].lower())
            if label is None:
                continue
            rows.append((asset_id, label, box["x1"], box["y1"], box["x2"], box["y2"]))
            scores.append(box["score"])
    seconds = time.perf_counter() - started
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    dt = _boxes(arr, loaded.asset_ids, loaded.class_ids, np.array(scores, dtype=np.float64))
    ev = evaluator.evaluate(loaded.gt, dt, n_classes=len(loaded.class_ids))
    return {
        "AP": float(ev.stats["AP"]),
        "AP50": float(ev.stats["AP50"]),
        "images": len(items),
        "ms_per_image": round(1000 * seconds / max(1, len(items)), 2),
    }


def algorithm_use_quantized(*, user: User, algorithm: Algorithm, quantized: bool) -> Algorithm:
    if algorithm.owner_id != user.pk:
        raise NotFound(_("No such algorithm."))
    if quantized:
        if algorithm.quantization.get("state") != "done":
            raise Conflict(_("There is no quantised graph yet."), code="not_quantized")
        algorithm.file = algorithm.quantization["file"]
    else:
        algorithm.file = algorithm.float_file
    algorithm.quantized = quantized
    algorithm.save(update_fields=["file", "quantized"])
    return algorithm


# --- who sees what --------------------------------------------------------------------------------------


def algorithms_visible_to(user: User) -> QuerySet[Algorithm]:
    query = Q(owner=user) | Q(visibility=Visibility.PUBLIC)
    if user.is_platform_admin:
        query |= Q(visibility=Visibility.PENDING)
    return Algorithm.objects.filter(query)


def algorithm_visible(user: User, algorithm_id: int) -> Algorithm:
    """An algorithm the user may use; anything else is a 404, revealing nothing."""
    algorithm = algorithms_visible_to(user).filter(pk=algorithm_id).first()
    if algorithm is None:
        raise NotFound(_("No such algorithm."))
    return algorithm


SERVING_CACHE_SECONDS = 2.0
_serving: dict[tuple[int, int], tuple[float, Algorithm]] = {}


def algorithm_for_serving(user: User, algorithm_id: int) -> Algorithm:
    """``algorithm_visible`` remembered for a moment in this process (the hot path of the inference service
    saves a query per request); a change made elsewhere applies within SERVING_CACHE_SECONDS."""
    key, now = (user.pk, algorithm_id), time.monotonic()
    hit = _serving.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    algorithm = algorithm_visible(user, algorithm_id)
    if len(_serving) > 10_000:
        _serving.clear()
    _serving[key] = (now + SERVING_CACHE_SECONDS, algorithm)
    return algorithm


def serving_forget(algorithm_id: int) -> None:
    for key in [k for k in _serving if k[1] == algorithm_id]:
        _serving.pop(key, None)


def submit_for_review(*, user: User, algorithm: Algorithm) -> Algorithm:
    if algorithm.owner_id != user.pk:
        raise NotFound(_("No such algorithm."))
    if algorithm.visibility in (Visibility.PENDING, Visibility.PUBLIC):
        raise Conflict(_("This algorithm is already submitted or public."), code="already_submitted")
    algorithm.visibility, algorithm.review_reason = Visibility.PENDING, ""
    algorithm.save(update_fields=["visibility", "review_reason"])
    return algorithm


def review(*, user: User, algorithm: Algorithm, approve: bool, reason: str = "") -> Algorithm:
    if not user.is_platform_admin:
        raise Forbidden(_("Only administrators review algorithms."))
    if algorithm.visibility != Visibility.PENDING:
        raise Conflict(_("This algorithm is not waiting for review."), code="not_pending")
    if not approve and not reason.strip():
        raise Invalid(_("Say why it is rejected."), code="reason_required")
    algorithm.visibility = Visibility.PUBLIC if approve else Visibility.REJECTED
    algorithm.review_reason, algorithm.reviewed_by = reason.strip()[:2000], user
    algorithm.save(update_fields=["visibility", "review_reason", "reviewed_by"])
    return algorithm


# --- serving -------------------------------------------------------------------------------------------


def rate_check(key: str) -> None:
    """At most YMIR_PREDICT_RATE requests per YMIR_PREDICT_RATE_WINDOW seconds per token (shared cache)."""
    limit, window = settings.YMIR_PREDICT_RATE, settings.YMIR_PREDICT_RATE_WINDOW
    if limit <= 0:
        return
    slot = int(time.time() // window)
    count = _count_request(f"ymir:predict:{key}:{slot}", window + 1)
    if count > limit:
        retry = max(1, int(window - time.time() % window))
        raise Throttled(
            _("Too many requests for this token; try again in %(s)d seconds.") % {"s": retry}, retry_after=retry
        )


def _count_request(name: str, timeout: int) -> int:
    """One more request counted under ``name``; the count so far. On Redis one round trip (INCR and EXPIRE
    pipelined) instead of the three the cache API takes (add, then incr's existence check and increment):
    a quarter of a millisecond off every prediction."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        key = backend.make_and_validate_key(name)
        with backend._cache.get_client(key, write=True).pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, timeout)
            count, _expiring = pipe.execute()
        return int(count)
    backend.add(name, 0, timeout=timeout)
    try:
        return backend.incr(name)
    except ValueError:  # expired between the two calls
        backend.set(name, 1, timeout=timeout)
        return 1


def fetch_image(url: str) -> bytes:
    from core.netguard import fetch

    chunks = []
    for chunk in fetch(url, max_bytes=settings.YMIR_PREDICT_MAX_BYTES, timeout=20):
        chunks.append(chunk)
    return b"".join(chunks)


def check_max_boxes(max_boxes: int | None) -> None:
    if max_boxes is not None and not 1 <= max_boxes <= 1000:
        raise Invalid(_("max_boxes is between 1 and 1000."), code="invalid_max_boxes")


def predict(
    algorithm: Algorithm, images: list[bytes], *, score_threshold: float | None = None, max_boxes: int | None = None
) -> dict[str, Any]:
    """Boxes for each image (x1, y1, x2, y2 in pixels, class name, score) and timing."""
    if not images:
        raise Invalid(_("Send at least one image."), code="no_image")
    if len(images) > settings.YMIR_PREDICT_MAX_IMAGES:
        raise Invalid(_("At most %(n)d images per request.") % {"n": settings.YMIR_PREDICT_MAX_IMAGES}, code="too_many")
    check_max_boxes(max_boxes)
    threshold = algorithm.score_threshold if score_threshold is None else score_threshold
    if not 0 <= threshold <= 1:
        raise Invalid(_("The score threshold must be between 0 and 1."), code="invalid_score_threshold")
    started = time.perf_counter()
    decoded = []
    for i, data in enumerate(images):
        try:
            decoded.append(onnx_predict.decode_image(data))
        except onnx_predict.PredictError as exc:
            raise Invalid(_("Image %(i)d: %(error)s") % {"i": i, "error": exc}, code="invalid_image") from None
    decode_seconds = time.perf_counter() - started
    try:
        boxes, seconds = onnx_predict.predict(
            algorithm_path(algorithm), decoded, score_threshold=threshold, max_boxes=max_boxes or algorithm.max_boxes
        )
    except onnx_predict.PredictError as exc:
        raise Conflict(str(exc), code="unservable") from None
    if algorithm.keep_field_images:
        _keep_field_images(algorithm, images, boxes)
    return {
        "algorithm": algorithm.pk,
        "results": [{"boxes": b, "width": d.width, "height": d.height} for b, d in zip(boxes, decoded, strict=True)],
        "timing_ms": {
            "decode": round(1000 * decode_seconds, 2),
            "inference": round(1000 * seconds, 2),
            "total": round(1000 * (time.perf_counter() - started), 2),
        },
    }


def _keep_field_images(algorithm: Algorithm, images: list[bytes], boxes: list[list[dict[str, Any]]]) -> None:
    """Low-confidence images (best score under the threshold), sampled, up to the cap."""
    for data, found in zip(images, boxes, strict=True):
        top = max((b["score"] for b in found), default=0.0)
        if top >= algorithm.field_threshold or random.random() >= algorithm.field_rate:  # noqa: S311 (sampling)
            continue
        if FieldImage.objects.filter(algorithm=algorithm, collected=False).count() >= algorithm.field_cap:
            return
        try:
            info = inspect_image(data)
        except ImageRejected as exc:  # an image the graph read but the store refuses is not kept
            logger.info("field image not kept: %s", exc)
            continue
        store_bytes(info.sha1, data)
        asset, _new = Asset.objects.get_or_create(
            sha1=info.sha1,
            defaults={"width": info.width, "height": info.height, "size_bytes": info.size_bytes, "format": info.format},
        )
        with contextlib.suppress(IntegrityError), transaction.atomic():  # the same image twice: kept once
            FieldImage.objects.create(algorithm=algorithm, asset=asset, top_score=top)


def field_images_collect(*, user: User, algorithm: Algorithm) -> DatasetVersion:
    """The kept field images as a new dataset version in the algorithm's project (for the next iteration)."""
    from datasets.importer import version_finish
    from models_app.landing import _free_group_name

    if algorithm.owner_id != user.pk or algorithm.project_id is None:
        raise NotFound(_("No such algorithm."))
    with transaction.atomic():
        kept = list(FieldImage.objects.select_for_update().filter(algorithm=algorithm, collected=False))
        if not kept:
            raise Conflict(_("No field images kept since the last collection."), code="nothing_kept")
        group = DatasetGroup.objects.create(
            project_id=algorithm.project_id, name=_free_group_name(algorithm.project_id, f"field-{algorithm.pk}")
        )
        version = DatasetVersion.objects.create(group=group, number=1, parameters={"field_images": algorithm.pk})
        DatasetAsset.objects.bulk_create(
            [
                DatasetAsset(
                    version=version, asset_id=f.asset_id, name=f"field-{f.pk}", tags={"top_score": f.top_score}
                )
                for f in kept
            ]
        )
        FieldImage.objects.filter(pk__in=[f.pk for f in kept]).update(collected=True)
        version_finish(version, {"operation": "field images", "algorithm": algorithm.pk, "images": len(kept)})
    return version


# --- devices ---------------------------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def device_add(*, user: User, name: str, kind: str = "", location: str = "") -> tuple[Device, str]:
    """A device and its token (shown once)."""
    name = " ".join(name.split())
    if not name:
        raise Invalid(_("A device needs a name."), code="invalid_name")
    token = "ymd_" + secrets.token_urlsafe(30)
    device = Device.objects.create(
        owner=user,
        name=name[:100],
        kind=kind[:100],
        location=location[:200],
        token_hash=_hash(token),
        token_prefix=token[:12],
    )
    return device, token


def device_for_token(token: str) -> Device:
    device = Device.objects.filter(token_hash=_hash(token.strip())).first() if token else None
    if device is None:
        raise Forbidden(_("Not a device token."))
    return device


def device_heartbeat(device: Device, status: dict[str, Any]) -> Device:
    now = timezone.now()
    keep = {k: status.get(k) for k in ("serving", "agent", "address", "errors") if k in status}
    Device.objects.filter(pk=device.pk).update(last_seen=now, status=keep, registered_at=device.registered_at or now)
    device.refresh_from_db()
    return device


def device_assignments(device: Device) -> list[Algorithm]:
    """What the device serves: its enabled assignments of algorithms its owner may use."""
    allowed = algorithms_visible_to(device.owner)
    ids = Assignment.objects.filter(device=device, enabled=True).values_list("algorithm_id", flat=True)
    return list(allowed.filter(pk__in=list(ids)))


def assignment_set(*, user: User, device: Device, algorithm: Algorithm, enabled: bool) -> Assignment:
    if device.owner_id != user.pk:
        raise NotFound(_("No such device."))
    algorithm_visible(user, algorithm.pk)
    assignment, _created = Assignment.objects.update_or_create(
        device=device, algorithm=algorithm, defaults={"enabled": enabled}
    )
    return assignment


def device_online(device: Device) -> bool:
    return bool(
        device.last_seen
        and (timezone.now() - device.last_seen).total_seconds() < 3 * settings.YMIR_DEVICE_HEARTBEAT_SECONDS
    )
