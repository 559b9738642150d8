from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from django.http import FileResponse, HttpRequest
from django.utils.translation import gettext as _
from ninja import Router, Schema, Status
from pydantic import Field, ValidationError

from core.errors import Conflict, Invalid
from core.models import User
from datasets.analysis import analyse
from datasets.models import DatasetVersion
from datasets.operations import operation_start
from datasets.selectors import version_visible_to
from datasets.services import (
    FORMATS,
    UNKNOWN_CLASS_STRATEGIES,
    dataset_import_start,
    upload_adopt,
    upload_save,
    version_export,
)
from datasets.tags import asset_tags_edit, box_tags_edit
from projects.selectors import project_for

router = Router(tags=["datasets"])


class SourceIn(Schema):
    url: str | None = None
    path: str | None = None
    dataset_id: int | None = None


class DatasetImportIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    source: SourceIn
    format: str = Field("voc", pattern="^(" + "|".join(FORMATS) + ")$")
    unknown_classes: str = Field("stop", pattern="^(" + "|".join(UNKNOWN_CLASS_STRATEGIES) + ")$")


class DatasetCreatedOut(Schema):
    id: int
    task_id: int


class DatasetOut(Schema):
    id: int
    name: str
    number: int
    project_id: int
    state: str
    asset_count: int
    gt_box_count: int
    pred_box_count: int
    class_counts: dict[str, Any]
    report: dict[str, Any]
    task_id: int | None
    parents: list[int]
    is_public: bool
    created_at: datetime

    @staticmethod
    def resolve_name(obj: DatasetVersion) -> str:
        return obj.group.name

    @staticmethod
    def resolve_project_id(obj: DatasetVersion) -> int:
        return obj.group.project_id

    @staticmethod
    def resolve_parents(obj: DatasetVersion) -> list[int]:
        return list(obj.parents.values_list("id", flat=True))


IMPORT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                        "format": {"type": "string", "enum": list(FORMATS)},
                        "unknown_classes": {"type": "string", "enum": list(UNKNOWN_CLASS_STRATEGIES)},
                    },
                }
            },
            "application/json": {
                "schema": DatasetImportIn.model_json_schema(ref_template="#/components/schemas/{model}")
            },
        },
        "required": True,
    }
}


@router.post(
    "/projects/{project_id}/datasets",
    response={202: DatasetCreatedOut},
    openapi_extra=IMPORT_BODY,
    summary="Import a dataset: a zip upload (multipart 'file'), or JSON naming a server path or a dataset to copy",
)
def dataset_import(request: HttpRequest, project_id: int) -> Status[dict[str, int]]:
    user = cast(User, request.user)
    project = project_for(user, project_id)
    if request.content_type == "multipart/form-data":
        upload = request.FILES.get("file")
        if upload is None:
            raise Invalid(_("Send the zip in the multipart field 'file'."), code="invalid_source")
        if hasattr(upload, "temporary_file_path"):
            saved = upload_adopt(Path(upload.temporary_file_path()))
        else:
            saved = upload_save(upload)
        version = dataset_import_start(
            user=user,
            project=project,
            name=request.POST.get("name", ""),
            description=request.POST.get("description", ""),
            fmt=request.POST.get("format", "voc"),
            unknown_classes=request.POST.get("unknown_classes", "stop"),
            upload=saved,
        )
    else:
        try:
            body = DatasetImportIn.model_validate(json.loads(request.body or b"{}"))
        except (ValueError, ValidationError) as exc:
            details = exc.errors() if isinstance(exc, ValidationError) else str(exc)
            raise Invalid(_("The request is not valid."), details=json.loads(json.dumps(details, default=str))) from exc
        version = dataset_import_start(
            user=user,
            project=project,
            name=body.name,
            description=body.description,
            fmt=body.format,
            unknown_classes=body.unknown_classes,
            path=body.source.path,
            copy_of=body.source.dataset_id,
            url=body.source.url,
        )
    return Status(202, {"id": version.pk, "task_id": cast(int, version.task_id)})


@router.get("/datasets/{int:dataset_id}", response=DatasetOut)
def dataset_get(request: HttpRequest, dataset_id: int) -> DatasetVersion:
    return version_visible_to(cast(User, request.user), dataset_id)


@router.get("/datasets/{int:dataset_id}/export", summary="Download a VOC or COCO zip of the dataset")
def dataset_export(request: HttpRequest, dataset_id: int, format: str = "voc") -> FileResponse:
    version = version_visible_to(cast(User, request.user), dataset_id)
    handle = version_export(version=version, fmt=format)
    filename = f"{version.group.name}-v{version.number}-{format}.zip"
    return FileResponse(handle, as_attachment=True, filename=filename, content_type="application/zip")


class OperationIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    inputs: list[int] = Field(min_length=1)
    strategy: str | None = None
    classes: list[str] | None = None
    mode: str | None = None
    on: str | None = None
    others: list[int] | None = None
    count: int | None = None
    ratio: float | None = None
    ratios: list[float] | None = None
    seed: int = 0


class OperationOut(Schema):
    ids: list[int]
    task_id: int


def _operation_endpoint(kind: str) -> None:
    def endpoint(request: HttpRequest, body: OperationIn) -> Status[dict[str, object]]:
        params = body.model_dump(exclude_none=True, exclude={"name"})
        versions = operation_start(user=cast(User, request.user), kind=kind, name=body.name, params=params)
        return Status(202, {"ids": [v.pk for v in versions], "task_id": versions[0].task_id})

    endpoint.__name__ = f"dataset_{kind}"
    router.post(
        f"/datasets/{kind}",
        response={202: OperationOut},
        summary=f"{kind.capitalize()}: a set operation making new versions without copying images",
    )(endpoint)


for _kind in ("merge", "filter", "exclude", "sample", "split"):
    _operation_endpoint(_kind)


@router.get("/datasets/{int:dataset_id}/analysis", summary="Overall figures and distributions of a dataset")
def dataset_analysis(request: HttpRequest, dataset_id: int) -> dict[str, Any]:
    version = version_visible_to(cast(User, request.user), dataset_id)
    if version.state != DatasetVersion.State.READY:
        raise Conflict(_("The dataset is not ready."), code="not_ready")
    return analyse(version)


class BoxOut(Schema):
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None
    prediction: bool
    tags: dict[str, Any]


class AssetOut(Schema):
    asset_id: int
    sha1: str
    name: str
    width: int
    height: int
    tags: dict[str, Any]
    boxes: list[BoxOut]


class AssetPageOut(Schema):
    items: list[AssetOut]
    next: int | None


@router.get(
    "/datasets/{int:dataset_id}/assets", response=AssetPageOut, summary="Images with boxes, filtered, by cursor"
)
def dataset_assets(
    request: HttpRequest,
    dataset_id: int,
    label: str = "",
    tag: str = "",
    kind: str = "",
    cursor: int = 0,
    limit: int = 100,
) -> dict[str, object]:
    """``label`` is a class name or alias, ``tag`` is ``key=value``, ``kind`` is gt, pred or unlabelled."""
    from datasets.classes import resolve_keywords
    from datasets.models import Box
    from datasets.selectors import browse_items

    version = version_visible_to(cast(User, request.user), dataset_id)
    label_id = None
    if label:
        label_id = resolve_keywords([label]).get(" ".join(label.split()).lower())
        if label_id is None:
            raise Invalid(_("Unknown class: %(name)s") % {"name": label}, code="unknown_class")
    pair = tuple(tag.split("=", 1)) if tag else None
    if pair is not None and (len(pair) != 2 or not pair[0].isidentifier()):
        raise Invalid(_("A tag filter is key=value."), code="invalid_tag")
    if kind not in ("", "gt", "pred", "unlabelled"):
        raise Invalid(_("kind is gt, pred or unlabelled."), code="invalid_kind")
    page, following = browse_items(
        version,
        label_id=label_id,
        tag=pair,
        kind=kind,
        after=cursor,
        limit=max(1, min(limit, 500)),
    )
    boxes: dict[int, list[dict[str, object]]] = {}
    for box in Box.objects.filter(version=version, asset_id__in=[i.asset_id for i in page]).select_related("label"):
        boxes.setdefault(box.asset_id, []).append(
            {
                "label": box.label.name,
                "x1": box.x1,
                "y1": box.y1,
                "x2": box.x2,
                "y2": box.y2,
                "score": box.score,
                "prediction": box.prediction_set_id is not None,
                "tags": box.tags,
            }
        )
    items = [
        {
            "asset_id": i.asset_id,
            "sha1": i.asset.sha1,
            "name": i.name,
            "width": i.asset.width,
            "height": i.asset.height,
            "tags": i.tags,
            "boxes": boxes.get(i.asset_id, []),
        }
        for i in page
    ]
    return {"items": items, "next": following}


class TagsIn(Schema):
    set: dict[str, Any] = {}
    remove: list[str] = []


@router.patch("/datasets/{int:dataset_id}/assets/{int:asset_id}/tags", response=dict[str, Any])
def asset_tags_patch(request: HttpRequest, dataset_id: int, asset_id: int, body: TagsIn) -> dict[str, Any]:
    """Set and remove an image's tags in a dataset (the project's owner; the dataset ready)."""
    version = version_visible_to(cast(User, request.user), dataset_id)
    item = asset_tags_edit(
        user=cast(User, request.user), version=version, asset_id=asset_id, set_tags=body.set, remove=body.remove
    )
    return dict(item.tags)


@router.patch("/datasets/{int:dataset_id}/boxes/{int:box_id}/tags", response=dict[str, Any])
def box_tags_patch(request: HttpRequest, dataset_id: int, box_id: int, body: TagsIn) -> dict[str, Any]:
    """Set and remove a box's tags (ground truth or prediction) in a dataset."""
    version = version_visible_to(cast(User, request.user), dataset_id)
    box = box_tags_edit(
        user=cast(User, request.user), version=version, box_id=box_id, set_tags=body.set, remove=body.remove
    )
    return dict(box.tags)
