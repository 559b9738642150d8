"""Labelling pages: send a dataset to Label Studio, follow it, import, cancel, re-label; the signed image URLs
and the webhook Label Studio calls; the admins' labelling tool settings."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from core.models import User
from datasets import labelling as service
from datasets.models import DatasetVersion, LabelClass, Labelling, LabellingTool
from datasets.selectors import version_visible_to
from datasets.store import asset_path

logger = logging.getLogger(__name__)


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


def labellings_visible_to(user: User) -> QuerySet[Labelling]:
    rows = Labelling.objects.select_related("task", "source__group__project", "output_group", "prediction_set")
    return rows if user.is_platform_admin else rows.filter(task__user=user)


def _base(request: HttpRequest) -> str:
    return request.build_absolute_uri("/").rstrip("/")


@login_required
def labelling_new(request: HttpRequest, dataset_id: int) -> HttpResponse:
    version = version_visible_to(_user(request), dataset_id)
    if version.group.project.owner_id != _user(request).pk:
        raise Http404
    counts = version.class_counts if isinstance(version.class_counts, dict) else {}
    present = sorted({*counts.get("gt", {}), *counts.get("pred", {})})  # the classes already on these images
    form: dict[str, Any] = {
        "classes": present,
        "output_name": f"{version.group.name}-labelled",
        "keep_ground_truth": False,
    }
    status = 200
    if request.method == "POST":
        data = request.POST
        guideline = request.FILES.get("guideline")
        form = {
            "classes": data.getlist("classes"),
            "output_name": data.get("output_name", ""),
            "labellers": data.get("labellers", ""),
            "keep_ground_truth": bool(data.get("keep_ground_truth")),
            "prediction_set": data.get("prediction_set", ""),
        }
        try:
            labelling = service.labelling_create(
                user=_user(request),
                version=version,
                class_names=form["classes"],
                output_name=str(form["output_name"]),
                labellers=str(form["labellers"]).replace(",", "\n").splitlines(),
                keep_ground_truth=bool(form["keep_ground_truth"]),
                prediction_set_id=int(data["prediction_set"]) if data.get("prediction_set", "").isdigit() else None,
                guideline_name=(guideline.name or "") if guideline else "",
                guideline=guideline.read(service.MAX_GUIDELINE_BYTES + 1) if guideline else None,
                base_url=_base(request),
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
            status = 422
        else:
            messages.success(request, _("Sending the images to Label Studio."))
            return redirect("labelling_detail", labelling_id=labelling.pk)
    context = {
        "version": version,
        "form": form,
        "all_labels": LabelClass.objects.order_by("name"),
        "prediction_sets": version.prediction_sets.all(),
    }
    return render(request, "datasets/labelling_new.html", context, status=status)


@login_required
def labelling_detail(request: HttpRequest, labelling_id: int) -> HttpResponse:
    labelling = get_object_or_404(labellings_visible_to(_user(request)), pk=labelling_id)
    context = {
        "labelling": labelling,
        "task": labelling.task,
        "labels": labelling.labels.order_by("name"),
        "sent": labelling.items.filter(ls_task_id__isnull=False).count(),
        "tool_link": service.tool_link(labelling),
        "imports": DatasetVersion.objects.filter(group=labelling.output_group).order_by("-number")
        if labelling.output_group_id
        else [],
    }
    if getattr(request, "htmx", False) and request.GET.get("fragment") == "progress":
        return render(request, "datasets/labelling_detail.html#progress", context)
    context["invite"] = service.labelling_invite(labelling) if labelling.labellers else None
    return render(request, "datasets/labelling_detail.html", context)


def _act(request: HttpRequest, labelling_id: int) -> Labelling:
    labelling = get_object_or_404(labellings_visible_to(_user(request)), pk=labelling_id)
    if labelling.task.user_id != _user(request).pk:
        raise PermissionDenied
    return labelling


@login_required
@require_POST
def labelling_import(request: HttpRequest, labelling_id: int) -> HttpResponse:
    labelling = _act(request, labelling_id)
    try:
        service.collect_request(labelling)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Importing what is labelled; the new version appears below."))
    return redirect("labelling_detail", labelling_id=labelling.pk)


@login_required
@require_POST
def labelling_refresh(request: HttpRequest, labelling_id: int) -> HttpResponse:
    labelling = _act(request, labelling_id)
    from datasets.tasks import labelling_sync

    labelling_sync.delay(labelling.pk)
    messages.success(request, _("Asking Label Studio for the progress."))
    return redirect("labelling_detail", labelling_id=labelling.pk)


@login_required
@require_POST
def labelling_cancel(request: HttpRequest, labelling_id: int) -> HttpResponse:
    labelling = _act(request, labelling_id)
    if service.labelling_cancel(labelling):
        messages.success(request, _("Labelling cancelled; its Label Studio project is archived."))
    else:
        messages.error(request, _("This labelling has already ended."))
    return redirect("labelling_detail", labelling_id=labelling.pk)


@login_required
@require_POST
def labelling_relabel(request: HttpRequest, labelling_id: int) -> HttpResponse:
    labelling = _act(request, labelling_id)
    try:
        new = service.labelling_relabel(user=_user(request), labelling=labelling, base_url=_base(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("labelling_detail", labelling_id=labelling.pk)
    messages.success(request, _("Sent again as a new labelling."))
    return redirect("labelling_detail", labelling_id=new.pk)


def labelling_image(request: HttpRequest, token: str) -> FileResponse:
    """An image of a labelling at its signed URL (no login: labellers' browsers load it from Label Studio)."""
    found = service.image_lookup(token)
    if found is None:
        raise Http404
    _labelling, sha1 = found
    path = asset_path(sha1)
    if not path.exists():
        raise Http404
    response = FileResponse(path.open("rb"))
    response["Cache-Control"] = "private, max-age=3600"
    return response


@csrf_exempt
@require_POST
def labelling_hook(request: HttpRequest, labelling_id: int) -> JsonResponse:
    """Label Studio's webhook: refused (403) without the labelling's secret header, ignored for other projects."""
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": {"code": "invalid", "message": _("The body is not JSON.")}}, status=400)
    if not isinstance(payload, dict):
        return JsonResponse({"error": {"code": "invalid", "message": _("The body is not a JSON object.")}}, status=400)
    outcome = service.webhook_receive(labelling_id, request.headers.get(service.SECRET_HEADER, ""), payload)
    if outcome == "refused":
        return JsonResponse({"error": {"code": "forbidden", "message": _("Wrong or missing secret.")}}, status=403)
    return JsonResponse({"status": outcome})


# --- the tool (admins) --------------------------------------------------------------------------------


@login_required
def labelling_tool(request: HttpRequest) -> HttpResponse:
    if not _user(request).is_platform_admin:
        raise PermissionDenied
    status = 200
    if request.method == "POST":
        try:
            if request.POST.get("action") == "check":
                ok, message = service.tool_check()
                (messages.success if ok else messages.error)(request, message)
            else:
                service.tool_save(
                    user=_user(request), url=request.POST.get("url", ""), token=request.POST.get("token", "")
                )
                messages.success(request, _("Labelling tool saved."))
        except ServiceError as exc:
            messages.error(request, exc.message)
            status = 422
        else:
            return redirect("labelling_tool")
    url, token = service.tool_settings()
    context = {
        "tool": LabellingTool.objects.filter(pk=1).first(),
        "url": url,
        "has_token": bool(token),
        "from_environment": not LabellingTool.objects.filter(pk=1).exclude(url="").exists() and bool(url),
    }
    return render(request, "datasets/labelling_tool.html", context, status=status)
