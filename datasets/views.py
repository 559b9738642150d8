from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from core.models import User
from core.workspace import workspace_root
from datasets import classes as class_service
from datasets.analysis import analyse
from datasets.forms import AliasForm, ClassBatchForm, ClassRenameForm, ImportForm, MergeForm
from datasets.models import Box, DatasetAsset, DatasetVersion, LabelClass
from datasets.operations import operation_start
from datasets.selectors import browse_items, random_start, version_visible_to, versions_visible_to
from datasets.services import (
    dataset_delete,
    dataset_import_retry,
    dataset_import_start,
    dataset_set_public,
    upload_adopt,
    upload_save,
    version_export,
)
from datasets.store import asset_path
from datasets.tags import asset_tags_edit, box_tags_edit, clean_changes
from datasets.thumbs import thumbnail_path
from models_app.evaluations import OUTCOMES, assets_with_outcome, box_outcomes
from projects.selectors import project_for

PAGE_SIZE = 48
PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe"]


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


@login_required
def dataset_import(request: HttpRequest, project_id: int) -> HttpResponse:
    user = _user(request)
    project = project_for(user, project_id)
    choices = versions_visible_to(user).filter(state=DatasetVersion.State.READY)
    form = ImportForm(request.POST or None, request.FILES or None, versions=choices)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        upload = None
        if data["source"] == "upload":
            handle = data["file"]
            upload = (
                upload_adopt(Path(handle.temporary_file_path()))
                if hasattr(handle, "temporary_file_path")
                else upload_save(handle)
            )
        try:
            version = dataset_import_start(
                user=user,
                project=project,
                name=data["name"],
                description=data["description"],
                fmt=data["format"],
                unknown_classes=data["unknown_classes"],
                upload=upload,
                path=data["path"] if data["source"] == "path" else None,
                url=data["url"] if data["source"] == "url" else None,
                copy_of=data["copy_of"].pk if data["source"] == "copy" else None,
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, _("Import started."))
            return redirect("dataset_detail", dataset_id=version.pk)
    return render(
        request,
        "datasets/dataset_import.html",
        {"project": project, "form": form},
        status=422 if request.method == "POST" else 200,
    )


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    version = version_visible_to(_user(request), dataset_id)
    label_id = request.GET.get("class", "")
    tag_text = request.GET.get("tag", "").strip()
    tag = tuple(tag_text.split("=", 1)) if "=" in tag_text else None
    box_tag_text = request.GET.get("boxtag", "").strip()
    box_tag = tuple(box_tag_text.split("=", 1)) if "=" in box_tag_text else None
    kind = request.GET.get("kind", "")
    after = request.GET.get("after", "")
    if request.GET.get("random") and version.state == DatasetVersion.State.READY:
        after = str(random_start(version))
    outcome_view = _outcome_params(request, version)
    only: set[int] | None = None
    if outcome_view and outcome_view["outcome"]:
        only = assets_with_outcome(
            version,
            outcome_view["pset"],
            outcome=outcome_view["outcome"],
            iou=outcome_view["iou"],
            score_threshold=outcome_view["score"],
        )
    page, next_after = browse_items(
        version,
        label_id=int(label_id) if label_id.isdigit() else None,
        tag=tag if tag and tag[0].isidentifier() else None,  # type: ignore[arg-type]
        box_tag=box_tag if box_tag and box_tag[0].isidentifier() else None,  # type: ignore[arg-type]
        kind=kind if kind in ("gt", "pred", "unlabelled") else "",
        after=int(after) if after.isdigit() else 0,
        limit=PAGE_SIZE,
        asset_ids=only,
    )
    boxes: dict[int, list[Box]] = {}
    layers = request.GET.getlist("layer") or ["gt", "pred"]
    box_query = Box.objects.filter(version=version, asset_id__in=[i.asset_id for i in page]).select_related("label")
    tags: dict[int, str] = {}
    if outcome_view:
        pset = outcome_view["pset"]
        box_query = box_query.filter(Q(prediction_set__isnull=True) | Q(prediction_set=pset))
        tags = box_outcomes(
            version,
            pset,
            iou=outcome_view["iou"],
            score_threshold=outcome_view["score"],
            only_assets=[i.asset_id for i in page],
        )
        box_query = box_query.filter(Q(prediction_set__isnull=True) | Q(pk__in=list(tags)))
    if "gt" not in layers:
        box_query = box_query.exclude(prediction_set__isnull=True)
    if "pred" not in layers:
        box_query = box_query.exclude(prediction_set__isnull=False)
    for box in box_query:
        _decorate(box, tags)
        boxes.setdefault(box.asset_id, []).append(box)
    cards = [{"item": i, "asset": i.asset, "boxes": boxes.get(i.asset_id, [])} for i in page]
    counts = version.class_counts.get("gt", {}) if isinstance(version.class_counts, dict) else {}
    peak = max(counts.values(), default=0)
    class_bars = [{"name": n, "count": c, "share": 100 * c / peak if peak else 0} for n, c in sorted(counts.items())]
    context = {
        "version": version,
        "task": version.task,
        "cards": cards,
        "next_after": next_after,
        "tag": tag_text,
        "box_tag": box_tag_text,
        "kind": kind,
        "class_bars": class_bars,
        "labels": LabelClass.objects.filter(name__in=counts.keys()),
        "selected_class": label_id,
        "layers": layers,
        "others": versions_visible_to(_user(request)).filter(state=DatasetVersion.State.READY).exclude(pk=version.pk),
        "all_labels": LabelClass.objects.order_by("name"),
        "prediction_sets": version.prediction_sets.order_by("-created_at"),
        "outcome_view": outcome_view,
        "outcomes": OUTCOMES,
        "keep": _keep_query(request),
        "labellings": version.labellings.select_related("task").order_by("-created_at")[:10]
        if version.group.project.owner_id == _user(request).pk
        else [],
    }
    if getattr(request, "htmx", False) and request.GET.get("fragment") == "state":
        return render(request, "datasets/dataset_detail.html#state", context)
    return render(request, "datasets/dataset_detail.html", context)


@login_required
@require_POST
def dataset_retry(request: HttpRequest, dataset_id: int) -> HttpResponse:
    version = version_visible_to(_user(request), dataset_id)
    if version.group.project.owner_id != request.user.pk:
        raise Http404
    try:
        dataset_import_retry(user=_user(request), version=version)
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("dataset_detail", dataset_id=version.pk)


@login_required
def asset_image(request: HttpRequest, sha1: str) -> FileResponse:
    """An image, to users who can see a version holding it."""
    user = _user(request)
    visible = DatasetAsset.objects.filter(asset__sha1=sha1).filter(
        Q(version__group__project__owner=user) | Q(version__is_public=True)
    )
    if len(sha1) != 40 or not visible.exists():
        raise Http404
    asset = visible.first().asset  # type: ignore[union-attr]
    path, content_type = asset_path(sha1), f"image/{asset.format}"
    if request.GET.get("thumb") and asset.has_thumbnail:
        path, content_type = thumbnail_path(sha1, workspace_root()), "image/jpeg"
    if not path.exists():
        raise Http404
    response = FileResponse(path.open("rb"), content_type=content_type)
    response["Cache-Control"] = "private, max-age=86400, immutable"
    return response


# --- Classes --------------------------------------------------------------------------------------


@login_required
def class_list(request: HttpRequest) -> HttpResponse:
    form = ClassBatchForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        created, skipped = class_service.classes_create_batch(user=_user(request), text=form.cleaned_data["text"])
        if created:
            messages.success(request, _("Added %(n)d classes.") % {"n": len(created)})
        for line in skipped:
            messages.error(request, line)
        return redirect("class_list")
    labels = LabelClass.objects.prefetch_related("keywords").order_by("name")
    return render(request, "datasets/class_list.html", {"labels": labels, "form": form})


def _class_action(request: HttpRequest, label_id: int, form_class: type, action: object) -> HttpResponse:
    label = get_object_or_404(LabelClass, pk=label_id)
    form = form_class(request.POST)
    if form.is_valid():
        try:
            action(label, **form.cleaned_data)  # type: ignore[operator]
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, _("Saved."))
    else:
        messages.error(request, _("Check the form."))
    return redirect("class_list")


@login_required
@require_POST
def class_rename(request: HttpRequest, label_id: int) -> HttpResponse:
    return _class_action(
        request, label_id, ClassRenameForm, lambda lb, name: class_service.class_rename(label=lb, name=name)
    )


@login_required
@require_POST
def class_alias(request: HttpRequest, label_id: int) -> HttpResponse:
    return _class_action(
        request, label_id, AliasForm, lambda lb, alias: class_service.class_add_alias(label=lb, alias=alias)
    )


@login_required
@require_POST
def class_merge(request: HttpRequest, label_id: int) -> HttpResponse:
    def merge(label: LabelClass, target: int) -> None:
        class_service.class_merge(source=label, target=get_object_or_404(LabelClass, pk=target))

    return _class_action(request, label_id, MergeForm, merge)


@login_required
def dataset_export(request: HttpRequest, dataset_id: int) -> HttpResponseBase:
    version = version_visible_to(_user(request), dataset_id)
    fmt = request.GET.get("format", "voc")
    try:
        handle = version_export(version=version, fmt=fmt)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("dataset_detail", dataset_id=version.pk)
    filename = f"{version.group.name}-v{version.number}-{fmt}.zip"
    return FileResponse(handle, as_attachment=True, filename=filename, content_type="application/zip")


def _numbers(text: str, cast_to: type[float]) -> list[float]:
    return [cast_to(part) for part in text.replace(" ", "").split(",") if part]


@login_required
@require_POST
def dataset_operate(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """One form per operation on the dataset page; the new versions open when made."""
    version = version_visible_to(_user(request), dataset_id)
    post = request.POST
    kind = post.get("kind", "")
    params: dict[str, object] = {"inputs": [version.pk], "seed": 0}
    try:
        if post.get("seed"):
            params["seed"] = int(post["seed"])
        if kind == "merge":
            params["inputs"] = [version.pk, *(int(i) for i in post.getlist("others"))]
            params["strategy"] = post.get("strategy", "stop")
        elif kind == "filter":
            params.update(classes=post.getlist("classes"), mode=post.get("mode", "keep"), on=post.get("on", "gt"))
        elif kind == "exclude":
            params["others"] = [int(i) for i in post.getlist("others")]
        elif kind == "sample":
            amount = post.get("amount", "").strip()
            params["ratio" if "." in amount else "count"] = float(amount) if "." in amount else int(amount)
        elif kind == "split":
            params["ratios"] = _numbers(post.get("ratios", ""), float)
        versions = operation_start(user=_user(request), kind=kind, name=post.get("name", ""), params=params)
    except ValueError:
        messages.error(request, _("Numbers are needed here."))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Operation started."))
        return redirect("dataset_detail", dataset_id=versions[0].pk)
    return redirect("dataset_detail", dataset_id=version.pk)


def _series(analyses: list[dict[str, object]], path: tuple[str, ...]) -> dict[str, object]:
    """One chart: the bins of the first analysis, one series (dataset) each."""
    series = []
    labels: list[str] = []
    for analysis in analyses:
        node: Any = analysis
        for key in path:
            node = node[key]
        labels = node["bins"]
        series.append({"label": analysis["name"], "data": node["counts"]})
    return {"labels": labels, "series": series}


def _class_series(analyses: list[dict[str, Any]], layer: str) -> dict[str, object]:
    names = sorted({n for a in analyses for n in a["boxes"][layer]["classes"]})
    return {
        "labels": names,
        "series": [
            {"label": a["name"], "data": [a["boxes"][layer]["classes"].get(n, 0) for n in names]} for a in analyses
        ],
    }


@login_required
def dataset_analysis(request: HttpRequest) -> HttpResponse:
    """Analysis of one dataset, or several side by side (?ids=1&ids=2)."""
    user = _user(request)
    ids = [int(i) for i in request.GET.getlist("ids") if i.isdigit()][:6]
    versions = [version_visible_to(user, i) for i in ids]
    analyses = [analyse(v) for v in versions if v.state == DatasetVersion.State.READY]
    charts: list[dict[str, Any]] = []
    if analyses:
        charts = [
            {"id": "file-size", "title": _("Image file size"), **_series(analyses, ("images", "file_size"))},
            {
                "id": "aspect",
                "title": _("Aspect ratio (width / height)"),
                **_series(analyses, ("images", "aspect_ratio")),
            },
            {"id": "megapixels", "title": _("Resolution (megapixels)"), **_series(analyses, ("images", "megapixels"))},
            {"id": "quality", "title": _("Image quality score"), **_series(analyses, ("quality",))},
            {"id": "gt-classes", "title": _("Class proportion (ground truth)"), **_class_series(analyses, "gt")},
            {
                "id": "gt-area",
                "title": _("Box area / image area (ground truth)"),
                **_series(analyses, ("boxes", "gt", "relative_area")),
            },
            {
                "id": "gt-side",
                "title": _("Box size, square root of area (ground truth)"),
                **_series(analyses, ("boxes", "gt", "side_pixels")),
            },
        ]
        if any(a["boxes"]["pred"]["count"] for a in analyses):
            charts += [
                {"id": "pred-classes", "title": _("Class proportion (predictions)"), **_class_series(analyses, "pred")},
                {
                    "id": "pred-area",
                    "title": _("Box area / image area (predictions)"),
                    **_series(analyses, ("boxes", "pred", "relative_area")),
                },
            ]
    for chart in charts:
        series: Any = chart["series"]
        labels: Any = chart["labels"]
        chart["rows"] = [(label, [s["data"][i] for s in series]) for i, label in enumerate(labels)]
    choices = versions_visible_to(user).filter(state=DatasetVersion.State.READY).order_by("-created_at")[:200]
    return render(
        request,
        "datasets/dataset_analysis.html",
        {"analyses": analyses, "charts": charts, "choices": choices, "selected": ids},
    )


@login_required
@require_POST
def dataset_delete_view(request: HttpRequest, dataset_id: int) -> HttpResponse:
    version = version_visible_to(_user(request), dataset_id)
    project_id = version.group.project_id
    try:
        dataset_delete(user=_user(request), version=version)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("dataset_detail", dataset_id=version.pk)
    messages.success(request, _("Dataset deleted."))
    return redirect("project_detail", project_id=project_id)


@login_required
@require_POST
def dataset_public(request: HttpRequest, dataset_id: int) -> HttpResponse:
    version = version_visible_to(_user(request), dataset_id)
    try:
        dataset_set_public(user=_user(request), version=version, public=request.POST.get("public") == "1")
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("dataset_detail", dataset_id=version.pk)


@login_required
def asset_detail(request: HttpRequest, dataset_id: int, asset_id: int) -> HttpResponse:
    """One image of a version: full size, every box with class, layer, score and tags, and its tags. With a
    prediction set chosen: ground truth and predictions side by side, each box tagged TP / FP / FN / MTP."""
    version = version_visible_to(_user(request), dataset_id)
    item = get_object_or_404(DatasetAsset.objects.select_related("asset"), version=version, asset_id=asset_id)
    query = Box.objects.filter(version=version, asset_id=asset_id).select_related("label")
    outcome_view = _outcome_params(request, version)
    tags: dict[int, str] = {}
    if outcome_view:
        tags = box_outcomes(
            version,
            outcome_view["pset"],
            iou=outcome_view["iou"],
            score_threshold=outcome_view["score"],
            only_assets=[asset_id],
        )
        query = query.filter(Q(prediction_set__isnull=True) | Q(pk__in=list(tags)))
    boxes = list(query.order_by("prediction_set_id", "id"))
    for box in boxes:
        _decorate(box, tags)
    context = {
        "version": version,
        "item": item,
        "boxes": boxes,
        "gt_boxes": [b for b in boxes if b.prediction_set_id is None],
        "pred_boxes": [b for b in boxes if b.prediction_set_id is not None],
        "prediction_sets": version.prediction_sets.order_by("-created_at"),
        "outcome_view": outcome_view,
        "counts": {k: list(tags.values()).count(k) for k in OUTCOMES},
        "can_edit": version.group.project.owner_id == request.user.pk and version.state == DatasetVersion.State.READY,
    }
    return render(request, "datasets/asset_detail.html", context)


OUTCOME_COLOURS = {"TP": "#2e9e44", "MTP": "#2e9e44", "FP": "#d62828", "FN": "#f08c00"}


def _decorate(box: Box, tags: dict[int, str]) -> None:
    box.outcome = tags.get(box.pk, "")  # type: ignore[attr-defined]
    box.colour = OUTCOME_COLOURS.get(box.outcome) or PALETTE[box.label_id % len(PALETTE)]  # type: ignore[attr-defined]
    box.w, box.h = box.x2 - box.x1, box.y2 - box.y1  # type: ignore[attr-defined]


def _outcome_params(request: HttpRequest, version: DatasetVersion) -> dict[str, Any] | None:
    """?pset=&iou=&score=&outcome=: a prediction set of this version to tag boxes with, or None."""
    raw = request.GET.get("pset", "")
    pset = version.prediction_sets.filter(pk=int(raw)).first() if raw.isdigit() else None
    if pset is None:
        return None

    def number(name: str, default: float, low: float, high: float) -> float:
        try:
            value = float(request.GET.get(name, default))
        except ValueError:
            return default
        return value if low <= value <= high else default

    outcome = request.GET.get("outcome", "")
    return {
        "pset": pset,
        "iou": number("iou", 0.5, 0.05, 0.95),
        "score": number("score", 0.3, 0.0, 1.0),
        "outcome": outcome if outcome in OUTCOMES else "",
    }


def _keep_query(request: HttpRequest) -> str:
    """The browse filters, for the next-page link."""
    query = request.GET.copy()
    for key in ("after", "random", "fragment"):
        query.pop(key, None)
    return query.urlencode()


@login_required
@require_POST
def asset_tags(request: HttpRequest, dataset_id: int, asset_id: int) -> HttpResponse:
    """Set (key, value) or remove (key, empty value) an image's tag, or a box's tag (``box`` given)."""
    version = version_visible_to(_user(request), dataset_id)
    key = request.POST.get("key", "").strip()
    value = request.POST.get("value", "").strip()
    changes: dict[str, object] = {key: value} if value else {}
    removed = [] if value else [key]
    try:
        box_id = request.POST.get("box", "")
        if box_id.isdigit():
            box_tags_edit(user=_user(request), version=version, box_id=int(box_id), set_tags=changes, remove=removed)
        else:
            if not value:
                clean_changes({key: "x"}, [])  # the key is checked even when removing
            asset_tags_edit(user=_user(request), version=version, asset_id=asset_id, set_tags=changes, remove=removed)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Tags saved."))
    return redirect("asset_detail", version.pk, asset_id)


@login_required
def public_datasets(request: HttpRequest) -> HttpResponse:
    """Every user's public datasets, to look at and to copy into one's own projects."""
    user = _user(request)
    if request.method == "POST":
        source = version_visible_to(user, int(request.POST.get("dataset", "0") or 0))
        project = project_for(user, int(request.POST.get("project", "0") or 0))
        try:
            copy = dataset_import_start(
                user=user, project=project, name=request.POST.get("name", "") or source.group.name, copy_of=source.pk
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, _("Copying into %(project)s.") % {"project": project.name})
            return redirect("dataset_detail", copy.pk)
    public = (
        DatasetVersion.objects.filter(is_public=True, state=DatasetVersion.State.READY)
        .select_related("group__project__owner")
        .order_by("-created_at")
    )
    return render(
        request, "datasets/public_datasets.html", {"datasets": public, "projects": user.projects.order_by("name")}
    )
