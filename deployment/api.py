"""The deployment API: publish, the inference service, review, field images, devices and the device agent."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, cast

from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from ninja import Router, Schema
from pydantic import Field

from core.api_auth import TokenAuth
from core.errors import Forbidden, Invalid, NotFound
from core.models import User
from deployment import fastpath, services
from deployment.models import Algorithm, Device
from models_app.models import ModelStage

router = Router(tags=["deployment"])


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


class AlgorithmIn(Schema):
    stage_id: int
    name: str = Field("", max_length=100)
    description: str = Field("", max_length=2000)
    score_threshold: float = Field(0.25, ge=0, le=1)
    quantize: bool = False


class AlgorithmPatch(Schema):
    score_threshold: float | None = Field(None, ge=0, le=1)
    use_quantized: bool | None = None
    keep_field_images: bool | None = None
    field_threshold: float | None = Field(None, ge=0, le=1)
    field_rate: float | None = Field(None, ge=0, le=1)
    field_cap: int | None = Field(None, ge=0, le=1_000_000)


class AlgorithmOut(Schema):
    id: int
    name: str
    description: str
    owner: str
    class_names: list[str]
    image_size: int
    score_threshold: float
    quantized: bool
    quantization: dict[str, Any]
    card: dict[str, Any]
    visibility: str
    review_reason: str
    keep_field_images: bool
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Algorithm) -> str:
        return obj.owner.username


class ReviewIn(Schema):
    approve: bool
    reason: str = Field("", max_length=2000)


@router.post("/algorithms", response={201: AlgorithmOut})
def algorithm_publish(request: HttpRequest, body: AlgorithmIn) -> tuple[int, Algorithm]:
    stage = ModelStage.objects.filter(pk=body.stage_id, version__group__project__owner=_user(request)).first()
    if stage is None:
        raise NotFound(_("No such model."))
    algorithm = services.algorithm_publish(
        user=_user(request),
        stage=stage,
        name=body.name,
        description=body.description,
        score_threshold=body.score_threshold,
        quantize=body.quantize,
    )
    return 201, algorithm


@router.get("/algorithms", response=list[AlgorithmOut])
def algorithm_list(request: HttpRequest) -> list[Algorithm]:
    return list(services.algorithms_visible_to(_user(request)).select_related("owner"))


@router.get("/algorithms/{algorithm_id}", response=AlgorithmOut)
def algorithm_get(request: HttpRequest, algorithm_id: int) -> Algorithm:
    return services.algorithm_visible(_user(request), algorithm_id)


def _own(request: HttpRequest, algorithm_id: int) -> Algorithm:
    algorithm = services.algorithm_visible(_user(request), algorithm_id)
    if algorithm.owner_id != _user(request).pk:
        raise NotFound(_("No such algorithm."))
    return algorithm


@router.patch("/algorithms/{algorithm_id}", response=AlgorithmOut)
def algorithm_patch(request: HttpRequest, algorithm_id: int, body: AlgorithmPatch) -> Algorithm:
    algorithm = _own(request, algorithm_id)
    changes = body.dict(exclude_unset=True)
    if "use_quantized" in changes:
        services.algorithm_use_quantized(
            user=_user(request), algorithm=algorithm, quantized=bool(changes.pop("use_quantized"))
        )
    for key, value in changes.items():
        if value is not None:
            setattr(algorithm, key, value)
    algorithm.save()
    return algorithm


def _images_from(request: HttpRequest) -> list[bytes]:
    """The images of a predict request: multipart files, raw image bytes, or JSON with base64 or URLs."""
    content_type = request.content_type or ""
    if content_type.startswith("multipart/"):
        return [f.read() for f in request.FILES.getlist("image") + request.FILES.getlist("images")]
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [request.body]
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise Invalid(
            _("Send an image: multipart, raw bytes, or JSON with image_base64 or url."), code="no_image"
        ) from None
    entries: list[Any] = body["images"] if isinstance(body, dict) and isinstance(body.get("images"), list) else [body]
    images = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise Invalid(_("Each image is an object with image_base64 or url."), code="no_image")
        if entry.get("image_base64"):
            try:
                images.append(base64.b64decode(str(entry["image_base64"]), validate=True))
            except (binascii.Error, ValueError):
                raise Invalid(_("image_base64 is not base64."), code="invalid_image") from None
        elif entry.get("url"):
            images.append(services.fetch_image(str(entry["url"])))
        else:
            raise Invalid(_("Each image is an object with image_base64 or url."), code="no_image")
    return images


@router.post("/algorithms/{algorithm_id}/predict", auth=TokenAuth(remember_seconds=services.SERVING_CACHE_SECONDS))
def algorithm_predict(
    request: HttpRequest, algorithm_id: int, score_threshold: float | None = None, max_boxes: int | None = None
) -> dict[str, Any]:
    """Boxes for one image or a batch. Token auth; per-token rate limit (429); body limit (413)."""
    algorithm = services.algorithm_for_serving(_user(request), algorithm_id)
    token = getattr(request, "api_token", None)
    if not request.META.get(fastpath.COUNTED):  # counted already when the fast path handed it on
        services.rate_check(str(token.pk) if token is not None else f"user{_user(request).pk}")
    services.check_max_boxes(max_boxes)  # before any image is read (or fetched from its URL)
    return services.predict(algorithm, _images_from(request), score_threshold=score_threshold, max_boxes=max_boxes)


@router.post("/algorithms/{algorithm_id}/submit", response=AlgorithmOut)
def algorithm_submit(request: HttpRequest, algorithm_id: int) -> Algorithm:
    return services.submit_for_review(user=_user(request), algorithm=_own(request, algorithm_id))


@router.post("/algorithms/{algorithm_id}/review", response=AlgorithmOut)
def algorithm_review(request: HttpRequest, algorithm_id: int, body: ReviewIn) -> Algorithm:
    if not _user(request).is_platform_admin:
        raise Forbidden(_("Only administrators review algorithms."))
    algorithm = get_object_or_404(Algorithm, pk=algorithm_id)
    return services.review(user=_user(request), algorithm=algorithm, approve=body.approve, reason=body.reason)


@router.post("/algorithms/{algorithm_id}/field-images/collect", response={201: dict[str, int]})
def field_images_collect(request: HttpRequest, algorithm_id: int) -> tuple[int, dict[str, int]]:
    version = services.field_images_collect(user=_user(request), algorithm=_own(request, algorithm_id))
    return 201, {"dataset_id": version.pk, "images": version.asset_count}


# --- devices -------------------------------------------------------------------------------------------


class DeviceIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    kind: str = Field("", max_length=100)
    location: str = Field("", max_length=200)


class DeviceOut(Schema):
    id: int
    name: str
    kind: str
    location: str
    token_prefix: str
    online: bool
    last_seen: datetime | None
    status: dict[str, Any]
    assignments: dict[str, bool]

    @staticmethod
    def resolve_online(obj: Device) -> bool:
        return services.device_online(obj)

    @staticmethod
    def resolve_assignments(obj: Device) -> dict[str, bool]:
        return {str(a.algorithm_id): a.enabled for a in obj.assignments.all()}


class DeviceCreated(Schema):
    device: DeviceOut
    token: str


class AssignmentIn(Schema):
    enabled: bool = True


@router.post("/devices", response={201: DeviceCreated})
def device_add(request: HttpRequest, body: DeviceIn) -> tuple[int, dict[str, Any]]:
    device, token = services.device_add(user=_user(request), name=body.name, kind=body.kind, location=body.location)
    return 201, {"device": device, "token": token}


@router.get("/devices", response=list[DeviceOut])
def device_list(request: HttpRequest) -> list[Device]:
    return list(Device.objects.filter(owner=_user(request)).prefetch_related("assignments"))


@router.put("/devices/{device_id}/assignments/{algorithm_id}", response=DeviceOut)
def device_assign(request: HttpRequest, device_id: int, algorithm_id: int, body: AssignmentIn) -> Device:
    device = get_object_or_404(Device, pk=device_id, owner=_user(request))
    algorithm = services.algorithm_visible(_user(request), algorithm_id)
    services.assignment_set(user=_user(request), device=device, algorithm=algorithm, enabled=body.enabled)
    return device


# --- the device agent (device token, not a user's) -------------------------------------------------------


class HeartbeatIn(Schema):
    serving: list[int] = []
    agent: str = Field("", max_length=100)
    address: str = Field("", max_length=200)
    errors: list[str] = []


def _device(request: HttpRequest, device_id: int) -> Device:
    device = services.device_for_token(request.headers.get("X-Device-Token", ""))
    if device.pk != device_id:
        raise Forbidden(_("This token belongs to another device."))
    return device


@router.post("/devices/{device_id}/agent/heartbeat", auth=None)
def agent_heartbeat(request: HttpRequest, device_id: int, body: HeartbeatIn) -> dict[str, Any]:
    """The agent registers (first beat) and beats; the answer is what it must serve now."""
    device = services.device_heartbeat(_device(request, device_id), body.dict())
    return {
        "device": device.pk,
        "heartbeat_seconds": services.settings.YMIR_DEVICE_HEARTBEAT_SECONDS,
        "algorithms": [
            {
                "id": a.pk,
                "name": a.name,
                "class_names": a.class_names,
                "image_size": a.image_size,
                "score_threshold": a.score_threshold,
                "version": services.algorithm_path(a).stat().st_mtime_ns,
            }
            for a in services.device_assignments(device)
        ],
    }


@router.get("/devices/{device_id}/agent/algorithms/{algorithm_id}/model", auth=None)
def agent_model(request: HttpRequest, device_id: int, algorithm_id: int) -> FileResponse:
    device = _device(request, device_id)
    algorithm = next((a for a in services.device_assignments(device) if a.pk == algorithm_id), None)
    if algorithm is None:
        raise NotFound(_("This algorithm is not deployed to this device."))
    return FileResponse(services.algorithm_path(algorithm).open("rb"), content_type="application/octet-stream")
