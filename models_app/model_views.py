"""Training, mining, inference and evaluation (diagnosis) pages. Plain forms; htmx reloads a form when the
chosen image changes (its hyper-parameters) and polls an evaluation while it runs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms as django_forms
from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy

from core.errors import ServiceError
from core.models import User
from datasets.models import DatasetVersion, PredictionSet
from datasets.selectors import version_visible_to, versions_visible_to
from models_app import evaluations, packages, training
from models_app.forms import (
    EvaluationForm,
    InferenceForm,
    MiningForm,
    TrainingForm,
    add_config_fields,
    config_names,
    config_values,
)
from models_app.models import ExecutorImage, GpuLease, Task, WorkerHost
from models_app.selectors import evaluation_visible_to, evaluations_of, images_usable_by, model_visible_to, stages_of
from projects.models import Project


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _ready_versions(project: Project, user: User) -> QuerySet[DatasetVersion]:
    return (
        versions_visible_to(user)
        .filter(state=DatasetVersion.State.READY)
        .filter(Q(group__project=project) | Q(is_public=True))
        .order_by("-created_at", "-id")
    )


def free_gpus() -> tuple[int, int]:
    """(free, declared) GPUs over worker hosts seen in the last few minutes."""
    recent = timezone.now() - timedelta(minutes=5)
    declared = sum(len(h.gpus) for h in WorkerHost.objects.filter(last_seen__gte=recent))
    held = GpuLease.objects.filter(expires_at__gte=timezone.now()).count()
    return max(0, declared - held), declared


def _image_from(request: HttpRequest, queryset: QuerySet[ExecutorImage], key: str = "image") -> ExecutorImage | None:
    raw = request.POST.get(key) or request.GET.get(key)
    if raw and raw.isdigit():
        return queryset.filter(pk=int(raw)).first()
    return queryset.first()


def _apply_service_error(form: django_forms.Form, exc: ServiceError) -> None:
    details = exc.details if isinstance(exc.details, dict) else {}
    placed = False
    for key, message in details.items():
        name = f"cfg_{key}"
        if name in form.fields:
            form.add_error(name, str(message))
            placed = True
    if not placed or exc.code != "invalid_config":
        form.add_error(None, exc.message)


def _refresh_initial(request: HttpRequest, multiple: tuple[str, ...] = ()) -> dict[str, Any]:
    """A form re-rendered for another image or model keeps what was typed, except the hyper-parameters."""
    if request.method != "POST":
        return {}
    return {
        k: (v if k in multiple else v[-1])
        for k, v in request.POST.lists()
        if not k.startswith("cfg_") and k != "csrfmiddlewaretoken"
    }


def _render_form(request: HttpRequest, template: str, context: dict[str, Any]) -> HttpResponse:
    form = context["form"]
    context["config_fields"] = [form[name] for name in config_names(form)]
    context["main_fields"] = [form[name] for name in form.fields if name not in config_names(form)]
    context["free_gpus"], context["declared_gpus"] = free_gpus()
    return render(request, template, context)


def _start_or_render(
    request: HttpRequest,
    form: django_forms.Form,
    start: Callable[[dict[str, Any]], Task],
    context: dict[str, Any],
) -> HttpResponse:
    """A bound, valid form starts its task (and shows it); otherwise, or when the service refuses, the form again."""
    if form.is_bound and form.is_valid():
        try:
            task = start(form.cleaned_data)
        except ServiceError as exc:
            _apply_service_error(form, exc)
        else:
            return redirect("task_detail", task.pk)
    return _render_form(request, "models_app/run_form.html", context)


# --- training ----------------------------------------------------------------------------------------------


@login_required
def training_new(request: HttpRequest, project_id: int) -> HttpResponse:
    user = _user(request)
    project = get_object_or_404(Project, pk=project_id, owner=user)
    images = images_usable_by(user).filter(templates__has_key="training")
    image = _image_from(request, images)
    versions = _ready_versions(project, user).filter(gt_box_count__gt=0)
    data = request.POST if request.method == "POST" and "start" in request.POST else None
    initial = {"train": request.GET.get("train"), **_refresh_initial(request, ("class_names",))}
    initial["image"] = image.pk if image else None
    form = TrainingForm(data, initial=initial)
    form.fields["image"].queryset = images  # type: ignore[attr-defined]
    form.fields["train"].queryset = versions  # type: ignore[attr-defined]
    form.fields["val"].queryset = versions  # type: ignore[attr-defined]
    form.fields["pretrained"].queryset = stages_of(user).filter(  # type: ignore[attr-defined]
        version__group__project=project, version__image=image
    )
    names = sorted({n for v in versions for n, c in (v.class_counts.get("gt") or {}).items() if c})
    form.fields["class_names"].choices = [(n, n) for n in names]  # type: ignore[attr-defined]
    add_config_fields(form, image, "training")
    return _start_or_render(
        request,
        form,
        lambda d: training.training_start(
            user=user,
            project=project,
            image=d["image"],
            train=d["train"],
            val=d["val"],
            class_names=d["class_names"],
            overlap=d["overlap"],
            pretrained=d["pretrained"],
            gpu_count=d["gpu_count"],
            config=config_values(form),
            model_name=d["model_name"],
        ),
        {"form": form, "project": project, "title": _("Train a model"), "kind": "training", "image": image},
    )


@login_required
def training_targets(request: HttpRequest, project_id: int) -> HttpResponse:
    """The "count positive / negative samples" action: each target's share of the training set's images."""
    user = _user(request)
    project = get_object_or_404(Project, pk=project_id, owner=user)
    raw = request.GET.get("train", "")
    version = version_visible_to(user, int(raw)) if raw.isdigit() else None
    names = request.GET.getlist("class_names")
    rows = training.target_counts(version, names) if version is not None and names else []
    return render(request, "models_app/_targets.html", {"rows": rows, "version": version, "project": project})


# --- mining --------------------------------------------------------------------------------------------


@login_required
def mining_new(request: HttpRequest, project_id: int) -> HttpResponse:
    user = _user(request)
    project = get_object_or_404(Project, pk=project_id, owner=user)
    stages = stages_of(user).filter(version__group__project=project).order_by("-version__created_at", "name")
    raw_stage = request.POST.get("stage") or request.GET.get("stage") or ""
    stage = stages.filter(pk=int(raw_stage)).first() if raw_stage.isdigit() else stages.first()
    ordered = training.mining_images_for(stage) if stage else []
    usable = {i.pk for i in images_usable_by(user)}
    image_ids = [i.pk for i in ordered if i.pk in usable]
    images = images_usable_by(user).filter(pk__in=image_ids)
    chosen = request.POST.get("image") or request.GET.get("image")
    image = _image_from(request, images) if chosen and image_ids else None
    if image is None and image_ids:  # the first related image by default
        image = images.get(pk=image_ids[0])
    data = request.POST if request.method == "POST" and "start" in request.POST else None
    initial = {"candidates": request.GET.get("candidates"), **_refresh_initial(request)}
    initial.update(stage=stage.pk if stage else None, image=image.pk if image else None)
    form = MiningForm(data, initial=initial)
    form.fields["candidates"].queryset = _ready_versions(project, user)  # type: ignore[attr-defined]
    form.fields["stage"].queryset = stages  # type: ignore[attr-defined]
    form.fields["image"].queryset = images  # type: ignore[attr-defined]
    form.fields["image"].choices = [(i.pk, i.name) for i in ordered if i.pk in usable]  # type: ignore[attr-defined]
    add_config_fields(form, image, "mining")
    return _start_or_render(
        request,
        form,
        lambda d: training.mining_start(
            user=user,
            project=project,
            image=d["image"],
            candidates=d["candidates"],
            stage=d["stage"],
            top_k=d["top_k"],
            also_infer=d["also_infer"],
            exclude_labelled=d["exclude_labelled"],
            exclude_mined=d["exclude_mined"],
            class_balance=d["class_balance"],
            diversity=d["diversity"],
            gpu_count=d["gpu_count"],
            config=config_values(form),
            output_name=d["output_name"],
        ),
        {"form": form, "project": project, "title": _("Mine data"), "kind": "mining", "image": image},
    )


# --- inference ---------------------------------------------------------------------------------------------


@login_required
def inference_new(request: HttpRequest, project_id: int) -> HttpResponse:
    user = _user(request)
    project = get_object_or_404(Project, pk=project_id, owner=user)
    form = InferenceForm(request.POST if request.method == "POST" else None)
    form.fields["stages"].queryset = stages_of(user).filter(version__group__project=project)  # type: ignore[attr-defined]
    form.fields["versions"].queryset = _ready_versions(project, user)  # type: ignore[attr-defined]
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            tasks = training.inference_start(
                user=user, stages=list(d["stages"]), versions=list(d["versions"]), gpu_count=d["gpu_count"]
            )
        except ServiceError as exc:
            _apply_service_error(form, exc)
        else:
            return (
                redirect(f"{_task_list_url()}?project={project.pk}&kind=inference")
                if len(tasks) > 1
                else redirect("task_detail", tasks[0].pk)
            )
    return _render_form(
        request,
        "models_app/run_form.html",
        {"form": form, "project": project, "title": _("Run inference"), "kind": "inference", "image": None},
    )


def _task_list_url() -> str:
    from django.urls import reverse

    return reverse("task_list")


# --- evaluation (diagnosis) --------------------------------------------------------------------------------


@login_required
def evaluation_new(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    with_predictions = (
        versions_visible_to(user)
        .filter(state=DatasetVersion.State.READY, gt_box_count__gt=0, prediction_sets__isnull=False)
        .distinct()
        .order_by("-created_at", "-id")
    )
    raw = request.POST.get("version") or request.GET.get("version") or ""
    version = with_predictions.filter(pk=int(raw)).first() if raw.isdigit() else with_predictions.first()
    data = request.POST if request.method == "POST" else None
    form = EvaluationForm(data, initial={"version": version.pk if version else None})
    form.fields["version"].queryset = with_predictions  # type: ignore[attr-defined]
    form.fields["prediction_sets"].queryset = (  # type: ignore[attr-defined]
        PredictionSet.objects.filter(version=version).order_by("-created_at")
        if version
        else PredictionSet.objects.none()
    )
    if data is not None and "start" in data and form.is_valid():
        d = form.cleaned_data
        try:
            evaluation = evaluations.evaluation_create(
                user=user,
                version=d["version"],
                prediction_sets=list(d["prediction_sets"]),
                ious=d["ious"],
                score_threshold=d["score_threshold"],
                max_dets=d["max_dets"],
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            return redirect("evaluation_detail", evaluation.pk)
    recent = evaluations_of(user)[:20]
    return render(request, "models_app/evaluation_new.html", {"form": form, "version": version, "recent": recent})


@login_required
def evaluation_detail(request: HttpRequest, evaluation_id: int) -> HttpResponse:
    """Reads the stored result: rendering costs the same whatever the number of images evaluated."""
    evaluation = evaluation_visible_to(_user(request), evaluation_id)
    result = evaluation.result or {}
    sets = result.get("sets", [])
    classes = result.get("classes", [])
    charts: list[dict[str, Any]] = []
    if sets:
        charts.append(
            {
                "id": "ap",
                "title": _("AP per class"),
                "type": "bar",
                "y_max": 1,
                "labels": classes,
                "series": [{"label": s["name"], "data": [r["ap"] for r in s["per_class"]]} for s in sets],
            }
        )
        recalls = [round(i * 0.05, 2) for i in range(21)]
        for s in sets:
            charts.append(
                {
                    "id": f"pr-{s['id']}",
                    "title": _("Precision-recall at IoU %(iou)s: %(name)s")
                    % {"iou": result["ious"][0], "name": s["name"]},
                    "type": "line",
                    "y_max": 1,
                    "labels": recalls,
                    "series": [{"label": r["name"], "data": r["pr"]} for r in s["per_class"]],
                }
            )
    stat_names = [
        ("AP", "mAP@.5:.95"), ("AP50", "mAP@.5"), ("AP75", "mAP@.75"), ("AP_small", "AP small"),
        ("AP_medium", "AP medium"), ("AP_large", "AP large"), ("AR1", "AR@1"), ("AR10", "AR@10"),
        ("AR100", "AR@100"), ("AR_small", "AR small"), ("AR_medium", "AR medium"), ("AR_large", "AR large"),
    ]  # fmt: skip
    names = {s["id"]: s["name"] for s in sets}
    comparison = [
        {**c, "name": names.get(c["set"], ""), "best_name": names.get(c["best"], "")}
        for c in result.get("comparison", [])
    ]
    confusions = []
    for s in sets:
        matrix = s.get("confusion") or []
        peak = max((v for row in matrix for v in row), default=0) or 1
        confusions.append(
            {
                "name": s["name"],
                "columns": [*classes, _("missed")],
                "rows": [
                    ([*classes, _("background")][i], [(v, round(v / peak, 3)) for v in row])
                    for i, row in enumerate(matrix)
                ],
            }
        )
    context = {
        "evaluation": evaluation,
        "result": result,
        "sets": sets,
        "stat_rows": [(label, [s["stats"].get(key) for s in sets]) for key, label in stat_names],
        "charts": charts,
        "comparison": comparison,
        "confusions": confusions,
    }
    return render(request, "models_app/evaluation_detail.html", context)


# --- model packages ------------------------------------------------------------------------------------


class ModelImportForm(django_forms.Form):
    package = django_forms.FileField(label=_lazy("Model package (.tar.gz) or ONNX graph (.onnx)"))
    name = django_forms.CharField(label=_lazy("Model name"), max_length=100, required=False)
    image = django_forms.ModelChoiceField(
        queryset=ExecutorImage.objects.none(), required=False, label=_lazy("Executor image it was trained with")
    )
    class_names = django_forms.CharField(
        label=_lazy("Classes (ONNX without class metadata: one per line)"),
        required=False,
        widget=django_forms.Textarea(attrs={"rows": 3}),
    )


@login_required
def model_import(request: HttpRequest, project_id: int) -> HttpResponse:
    user = _user(request)
    project = get_object_or_404(Project, pk=project_id, owner=user)
    form = ModelImportForm(request.POST or None, request.FILES or None)
    form.fields["image"].queryset = images_usable_by(user)  # type: ignore[attr-defined]
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["package"]
        try:
            version = packages.import_package(
                project=project,
                upload=upload,
                filename=upload.name or "",
                name=form.cleaned_data["name"],
                image=form.cleaned_data["image"],
                class_names=packages.class_list(form.cleaned_data["class_names"]),
            )
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            return redirect("model_detail", version.pk)
    return render(request, "models_app/model_import.html", {"form": form, "project": project})


@login_required
def model_export(request: HttpRequest, model_id: int) -> FileResponse:
    """The model as YMIR's package (tar.gz), built in a temporary file and streamed."""
    version = model_visible_to(_user(request), model_id)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it once sent)
    packages.export_package(version, spool)
    spool.seek(0)
    name = f"{version.group.name}-v{version.number}.tar.gz"
    return FileResponse(spool, as_attachment=True, filename=name, content_type="application/gzip")
