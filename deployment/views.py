"""Deployment pages: algorithms (mine, public, to review), an algorithm's card and try-out, devices."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core.errors import NotFound, ServiceError
from core.models import User
from core.netguard import UrlRefused
from deployment import services
from deployment.models import Algorithm, Device
from models_app import onnx_predict
from models_app.models import ModelStage


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


def _visible(request: HttpRequest, algorithm_id: int) -> Algorithm:
    try:
        return services.algorithm_visible(_user(request), algorithm_id)
    except NotFound:
        from django.http import Http404

        raise Http404 from None


@login_required
def algorithm_list(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    context = {
        "mine": Algorithm.objects.filter(owner=user),
        "public": Algorithm.objects.filter(visibility=Algorithm.Visibility.PUBLIC).select_related("owner"),
        "pending": Algorithm.objects.filter(visibility=Algorithm.Visibility.PENDING).select_related("owner")
        if user.is_platform_admin
        else [],
    }
    return render(request, "deployment/algorithm_list.html", context)


@login_required
@require_POST
def model_publish(request: HttpRequest, model_id: int) -> HttpResponse:
    stage = get_object_or_404(
        ModelStage,
        pk=request.POST.get("stage") or 0,
        version_id=model_id,
        version__group__project__owner=_user(request),
    )
    try:
        algorithm = services.algorithm_publish(
            user=_user(request),
            stage=stage,
            name=request.POST.get("name", ""),
            quantize=request.POST.get("quantize") == "1",
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("model_detail", model_id=stage.version_id)
    messages.success(request, _("Published to My algorithms."))
    return redirect("algorithm_detail", algorithm_id=algorithm.pk)


def _try(request: HttpRequest, algorithm: Algorithm) -> dict[str, Any]:
    upload = request.FILES.get("image")
    url = request.POST.get("url", "").strip()
    if bool(upload) == bool(url):
        return {"error": _("Give either an image file or an image URL.")}
    try:
        data = upload.read(settings.YMIR_PREDICT_MAX_BYTES + 1) if upload else services.fetch_image(url)
        if len(data) > settings.YMIR_PREDICT_MAX_BYTES:
            return {"error": _("The image is larger than %(n)s bytes.") % {"n": settings.YMIR_PREDICT_MAX_BYTES}}
        answer = services.predict(algorithm, [data])
    except ServiceError as exc:
        return {"error": exc.message}
    except UrlRefused as exc:
        return {"error": str(exc)}
    image = onnx_predict.decode_image(data)
    return {**onnx_predict.preview(image, answer["results"][0]["boxes"]), "milliseconds": answer["timing_ms"]["total"]}


@login_required
def algorithm_detail(request: HttpRequest, algorithm_id: int) -> HttpResponse:
    algorithm = _visible(request, algorithm_id)
    user = _user(request)
    tried = None
    if request.method == "POST":
        action = request.POST.get("action", "try")
        if action == "try":
            tried = _try(request, algorithm)
        else:
            try:
                _act(user, algorithm, action, request.POST)
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, _("Saved."))
            return redirect("algorithm_detail", algorithm_id=algorithm.pk)
    context = {
        "algorithm": algorithm,
        "mine": algorithm.owner_id == user.pk,
        "tried": tried,
        "kept": algorithm.field_images.filter(collected=False).count(),
        "api_url": request.build_absolute_uri(f"/api/v1/algorithms/{algorithm.pk}/predict"),
    }
    return render(request, "deployment/algorithm_detail.html", context)


def _act(user: User, algorithm: Algorithm, action: str, data: Any) -> None:
    if action == "review":
        services.review(
            user=user, algorithm=algorithm, approve=data.get("approve") == "1", reason=data.get("reason", "")
        )
        return
    if algorithm.owner_id != user.pk:
        raise NotFound(_("No such algorithm."))
    if action == "submit":
        services.submit_for_review(user=user, algorithm=algorithm)
    elif action == "quantized":
        services.algorithm_use_quantized(user=user, algorithm=algorithm, quantized=data.get("use") == "1")
    elif action == "field":
        algorithm.keep_field_images = data.get("keep") == "1"
        try:
            algorithm.field_threshold = min(1.0, max(0.0, float(data.get("threshold", algorithm.field_threshold))))
            algorithm.field_rate = min(1.0, max(0.0, float(data.get("rate", algorithm.field_rate))))
            algorithm.field_cap = max(0, int(data.get("cap", algorithm.field_cap)))
        except ValueError:
            from core.errors import Invalid

            raise Invalid(_("Check the numbers."), code="invalid") from None
        algorithm.save()
    elif action == "collect":
        services.field_images_collect(user=user, algorithm=algorithm)


@login_required
def device_list(request: HttpRequest) -> HttpResponse:
    created = None
    status = 200
    if request.method == "POST":
        try:
            device, token = services.device_add(
                user=_user(request),
                name=request.POST.get("name", ""),
                kind=request.POST.get("kind", ""),
                location=request.POST.get("location", ""),
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
            status = 422
        else:
            created = {"device": device, "token": token}  # shown once, on this answer only
    devices = list(Device.objects.filter(owner=_user(request)))
    for device in devices:
        device.online = services.device_online(device)  # type: ignore[attr-defined]
    context = {"devices": devices, "created": created, "server": request.build_absolute_uri("/").rstrip("/")}
    return render(request, "deployment/device_list.html", context, status=status)


@login_required
def device_detail(request: HttpRequest, device_id: int) -> HttpResponse:
    device = get_object_or_404(Device, pk=device_id, owner=_user(request))
    if request.method == "POST":
        algorithm = get_object_or_404(
            services.algorithms_visible_to(_user(request)), pk=request.POST.get("algorithm") or 0
        )
        action = request.POST.get("action", "on")
        if action == "undeploy":
            device.assignments.filter(algorithm=algorithm).delete()
        else:
            services.assignment_set(user=_user(request), device=device, algorithm=algorithm, enabled=action != "off")
        messages.success(request, _("Saved."))
        return redirect("device_detail", device_id=device.pk)
    assigned = {a.algorithm_id: a for a in device.assignments.all()}
    rows = [
        {"algorithm": a, "assignment": assigned.get(a.pk)}
        for a in services.algorithms_visible_to(_user(request)).order_by("name")
    ]
    context = {"device": device, "online": services.device_online(device), "rows": rows}
    if getattr(request, "htmx", False) and request.GET.get("fragment") == "status":
        return render(request, "deployment/device_detail.html#status", context)
    return render(request, "deployment/device_detail.html", context)
