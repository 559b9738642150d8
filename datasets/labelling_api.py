"""The labelling API: send a dataset to Label Studio, follow it, import, cancel, re-label; the tool (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from ninja import Router, Schema
from pydantic import Field

from core.errors import Conflict, Forbidden
from core.models import User
from datasets import labelling as service
from datasets.labelling_views import labellings_visible_to
from datasets.models import DatasetVersion, Labelling
from datasets.selectors import version_visible_to

router = Router(tags=["labelling"])


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


class LabellingIn(Schema):
    classes: list[str] = Field(min_length=1)
    output_name: str = Field("", max_length=100)
    labellers: list[str] = []
    keep_ground_truth: bool = False
    prediction_set_id: int | None = None
    guideline_name: str = ""
    guideline_text: str = ""


class LabellingOut(Schema):
    id: int
    task_id: int
    state: str
    source_id: int
    classes: list[str]
    labellers: list[str]
    total: int
    labelled: int
    tool_url: str
    label_studio_project_id: int | None
    tool_unreachable_since: datetime | None
    last_error: str
    import_requested: bool
    imported_versions: list[int]
    created_at: datetime

    @staticmethod
    def resolve_state(obj: Labelling) -> str:
        return obj.task.state

    @staticmethod
    def resolve_classes(obj: Labelling) -> list[str]:
        return [label.name for label in obj.labels.order_by("name")]

    @staticmethod
    def resolve_tool_url(obj: Labelling) -> str:
        return service.tool_link(obj)

    @staticmethod
    def resolve_label_studio_project_id(obj: Labelling) -> int | None:
        return obj.ls_project_id

    @staticmethod
    def resolve_tool_unreachable_since(obj: Labelling) -> datetime | None:
        return obj.unreachable_since

    @staticmethod
    def resolve_import_requested(obj: Labelling) -> bool:
        return obj.collect_requested

    @staticmethod
    def resolve_imported_versions(obj: Labelling) -> list[int]:
        if obj.output_group_id is None:
            return []
        return list(
            DatasetVersion.objects.filter(group_id=obj.output_group_id).order_by("number").values_list("id", flat=True)
        )


def _mine(request: HttpRequest, labelling_id: int) -> Labelling:
    labelling = get_object_or_404(labellings_visible_to(_user(request)), pk=labelling_id)
    if labelling.task.user_id != _user(request).pk:
        raise Forbidden(_("Only the one who started this labelling can change it."))
    return labelling


@router.post("/datasets/{dataset_id}/labellings", response={201: LabellingOut})
def labelling_create(request: HttpRequest, dataset_id: int, body: LabellingIn) -> tuple[int, Labelling]:
    version = version_visible_to(_user(request), dataset_id)
    labelling = service.labelling_create(
        user=_user(request),
        version=version,
        class_names=body.classes,
        output_name=body.output_name,
        labellers=body.labellers,
        keep_ground_truth=body.keep_ground_truth,
        prediction_set_id=body.prediction_set_id,
        guideline_name=body.guideline_name or ("guideline.md" if body.guideline_text else ""),
        guideline=body.guideline_text.encode() or None,
        base_url=request.build_absolute_uri("/").rstrip("/"),
    )
    return 201, labelling


@router.get("/labellings/{labelling_id}", response=LabellingOut)
def labelling_get(request: HttpRequest, labelling_id: int) -> Labelling:
    return get_object_or_404(labellings_visible_to(_user(request)), pk=labelling_id)


@router.post("/labellings/{labelling_id}/import", response={202: LabellingOut})
def labelling_import(request: HttpRequest, labelling_id: int) -> tuple[int, Labelling]:
    labelling = _mine(request, labelling_id)
    service.collect_request(labelling)
    labelling.refresh_from_db()
    return 202, labelling


@router.post("/labellings/{labelling_id}/cancel", response={202: LabellingOut})
def labelling_cancel(request: HttpRequest, labelling_id: int) -> tuple[int, Labelling]:
    labelling = _mine(request, labelling_id)
    if not service.labelling_cancel(labelling):
        raise Conflict(_("This labelling has already ended."), code="ended")
    labelling.refresh_from_db()
    labelling.task.refresh_from_db()
    return 202, labelling


@router.post("/labellings/{labelling_id}/relabel", response={201: LabellingOut})
def labelling_relabel(request: HttpRequest, labelling_id: int) -> tuple[int, Labelling]:
    labelling = _mine(request, labelling_id)
    return 201, service.labelling_relabel(user=_user(request), labelling=labelling, base_url=labelling.public_base)


class ToolIn(Schema):
    url: str = Field("", max_length=300)
    token: str = Field("", max_length=2000)


class ToolOut(Schema):
    url: str
    has_token: bool
    check_ok: bool | None
    check_message: str


def _admin(request: HttpRequest) -> None:
    if not _user(request).is_platform_admin:
        raise Forbidden(_("Only administrators set the labelling tool."))


def _tool_out() -> ToolOut:
    from datasets.models import LabellingTool

    url, token = service.tool_settings()
    row = LabellingTool.objects.filter(pk=1).first()
    return ToolOut(
        url=url,
        has_token=bool(token),
        check_ok=row.check_ok if row else None,
        check_message=row.check_message if row else "",
    )


@router.get("/labelling-tool", response=ToolOut)
def tool_get(request: HttpRequest) -> ToolOut:
    _admin(request)
    return _tool_out()


@router.put("/labelling-tool", response=ToolOut)
def tool_put(request: HttpRequest, body: ToolIn) -> ToolOut:
    _admin(request)
    service.tool_save(user=_user(request), url=body.url, token=body.token)
    return _tool_out()


@router.post("/labelling-tool/check", response=ToolOut)
def tool_check(request: HttpRequest) -> ToolOut:
    _admin(request)
    service.tool_check()
    return _tool_out()
