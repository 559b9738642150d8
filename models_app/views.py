"""Task pages (list, live task page, log, cancel, retry) and executor images (admins)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from core.models import User
from datasets.models import DatasetVersion
from models_app import executors, jobs, landing
from models_app.conformance import conformance_start, point_title
from models_app.contract import LOG_FILE
from models_app.errors import error_meaning
from models_app.models import Evaluation, ExecutorImage, ModelStage, ModelVersion, Task
from models_app.taskdir import task_dir
from models_app.tensorboard import read_scalars
from models_app.training import try_as_task


def tasks_visible_to(user: User) -> QuerySet[Task]:
    tasks = Task.objects.select_related("project", "image", "user")
    return tasks if user.is_platform_admin else tasks.filter(user=user)


@login_required
def task_list(request: HttpRequest) -> HttpResponse:
    tasks = tasks_visible_to(request.user)  # type: ignore[arg-type]
    kind, state, project = request.GET.get("kind", ""), request.GET.get("state", ""), request.GET.get("project", "")
    if kind in Task.Kind.values:
        tasks = tasks.filter(kind=kind)
    if state in Task.State.values:
        tasks = tasks.filter(state=state)
    if project.isdigit():
        tasks = tasks.filter(project_id=int(project))
    context = {
        "tasks": tasks.order_by("-created_at")[:200],
        "kinds": Task.Kind.choices,
        "states": Task.State.choices,
        "filters": {"kind": kind, "state": state, "project": project},
    }
    return render(request, "models_app/task_list.html", context)


@login_required
def task_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    if task.kind == Task.Kind.LABELLING and hasattr(task, "labelling"):
        return redirect("labelling_detail", labelling_id=task.labelling.pk)
    landed = task.result.get("landed", {}) if isinstance(task.result, dict) else {}
    context = {
        "task": task,
        "model": ModelVersion.objects.filter(pk=landed.get("model_version") or 0).select_related("group").first(),
        "dataset": DatasetVersion.objects.filter(pk=landed.get("dataset_version") or 0).select_related("group").first(),
        "meaning": error_meaning(task.error_code) if task.error_code else "",
        "position": jobs.queue_position(task),
        "has_log": (task_dir(task.pk) / "out" / LOG_FILE).exists(),
        "config_text": _yaml(task.config),
        "result_text": _yaml(task.result),
    }
    return render(request, "models_app/task_detail.html", context)


def _yaml(data: object) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else ""


@login_required
def task_log(request: HttpRequest, task_id: int) -> FileResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    path = task_dir(task.pk) / "out" / LOG_FILE
    if not path.is_file():
        raise PermissionDenied
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"task-{task.pk}.log", content_type="text/plain")


@login_required
@require_POST
def task_cancel(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    if jobs.cancel(task):
        messages.success(request, _("Cancelling the task."))
    else:
        messages.error(request, _("This task has already ended."))
    return redirect("task_detail", task_id=task.pk)


@login_required
@require_POST
def task_retry(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    try:
        new = jobs.job_retry(user=request.user, task=task)  # type: ignore[arg-type]
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("task_detail", task_id=task.pk)
    messages.success(request, _("Started again as task %(id)s.") % {"id": new.pk})
    return redirect("task_detail", task_id=new.pk)


# --- models ------------------------------------------------------------------------------------------


def _onnx_stages(version: ModelVersion, stages: list[ModelStage]) -> list[tuple[ModelStage, Path]]:
    folder = landing.model_dir(version.pk)
    found = []
    for stage in stages:
        onnx = [f for f in stage.files if f.endswith(".onnx")]
        if onnx and (folder / onnx[0]).is_file():
            found.append((stage, folder / onnx[0]))
    return found


def _try_model(request: HttpRequest, version: ModelVersion, stages: list[ModelStage]) -> dict[str, object]:
    """Try a stage on one uploaded image or URL (fetched under the dataset URL rules), through onnxruntime."""
    from core.netguard import UrlRefused, fetch
    from models_app.onnx_predict import PredictError, decode_image, predict, preview

    usable = {s.pk: path for s, path in _onnx_stages(version, stages)}
    raw_stage = request.POST.get("stage", "")
    path = usable.get(int(raw_stage)) if raw_stage.isdigit() else None
    as_task = raw_stage.isdigit() and path is None and any(s.pk == int(raw_stage) for s in stages)
    try:
        threshold = float(request.POST.get("score_threshold", "0.25"))
    except ValueError:
        threshold = -1.0
    upload = request.FILES.get("image")
    url = request.POST.get("url", "").strip()
    if path is None and not as_task:
        return {"error": _("Choose a stage of this model.")}
    if not 0 <= threshold <= 1:
        return {"error": _("The score threshold must be between 0 and 1.")}
    if bool(upload) == bool(url):
        return {"error": _("Give either an image file or an image URL.")}
    limit = settings.YMIR_TRY_MAX_BYTES
    try:
        if upload is not None:
            if upload.size is not None and upload.size > limit:
                return {"error": _("The image is larger than %(n)s bytes.") % {"n": limit}}
            data = upload.read()
        else:
            data = b"".join(fetch(url, max_bytes=limit, timeout=20))
        if as_task:  # no ONNX graph: a one-image inference task with the model's own image
            stage = next(s for s in stages if s.pk == int(raw_stage))
            user = request.user
            assert isinstance(user, User)
            task = try_as_task(user=user, stage=stage, data=data, filename=str(getattr(upload, "name", "") or url))
            return {"task": task}
        assert path is not None
        image = decode_image(data)
        (boxes,), seconds = predict(path, [image], score_threshold=threshold)
    except ServiceError as exc:
        return {"error": exc.message}
    except UrlRefused as exc:
        return {"error": str(exc)}
    except PredictError as exc:
        return {"error": str(exc)}
    return {
        **preview(image, boxes),
        "milliseconds": round(seconds * 1000, 1),
        "stage": next(s for s in stages if s.pk == int(raw_stage)),
    }


@login_required
def model_detail(request: HttpRequest, model_id: int) -> HttpResponse:
    version = get_object_or_404(
        ModelVersion.objects.select_related(
            "group__project", "task", "image", "train_version__group", "val_version__group"
        ),
        pk=model_id,
        group__project__owner=request.user,
    )
    stages = list(version.stages.all())
    platform = [s.metrics.get("AP") for s in stages if s.metrics.get("AP") is not None]
    context = {
        "version": version,
        "stages": stages,
        "best_platform": max(platform, default=None),
        "others": version.group.versions.exclude(pk=version.pk),
        "charts": _training_charts(landing.model_dir(version.pk) / "tensorboard"),
        "evaluating": _stages_evaluating(version, stages),
        "onnx_stages": [s for s, _p in _onnx_stages(version, stages)],
        "try_stages": stages,
        "tried": _try_model(request, version, stages) if request.method == "POST" else None,
    }
    return render(request, "models_app/model_detail.html", context)


def _stages_evaluating(version: ModelVersion, stages: list[ModelStage]) -> bool:
    """Some stage still waits for the platform's evaluation: its inference run or its evaluation is not final."""
    if version.task is None or all(s.metrics for s in stages):
        return False
    runs = (version.task.result.get("landed") or {}).get("stage_evaluations", [])
    if Task.objects.filter(pk__in=runs).exclude(state__in=Task.FINAL_STATES).exists():
        return True
    stage_ids = [s.pk for s in stages]
    return (
        Evaluation.objects.filter(prediction_sets__model_info__evaluate_stage__in=stage_ids)
        .exclude(task__state__in=Task.FINAL_STATES)
        .exists()
    )


def _training_charts(folder: Path) -> list[dict[str, object]]:
    """Training curves from the run's TensorBoard files: one line chart per kind (loss, learning rate, mAP)."""
    curves = read_scalars(folder)
    groups: dict[str, list[str]] = {}
    for tag in curves:
        leaf = tag.rsplit("/", 1)[-1].lower()
        kind = "map" if "map" in leaf else "lr" if leaf in ("lr", "learning_rate") or "lr" in leaf else "loss"
        groups.setdefault(kind, []).append(tag)
    titles = {
        "loss": _("Loss"),
        "lr": _("Learning rate"),
        "map": _("mAP on the validation set (reported by the image)"),
    }
    charts: list[dict[str, object]] = []
    for kind in ("loss", "lr", "map"):
        tags = groups.get(kind, [])
        if not tags:
            continue
        steps = sorted({step for tag in tags for step, _v in curves[tag]})
        series = []
        for tag in tags:
            values = dict(curves[tag])
            series.append({"label": tag, "data": [values.get(step) for step in steps]})
        charts.append({"id": f"curve-{kind}", "title": titles[kind], "type": "line", "labels": steps, "series": series})
    return charts


# --- executor images --------------------------------------------------------------------------------


def _admin_only(request: HttpRequest) -> None:
    if not request.user.is_platform_admin:  # type: ignore[union-attr]
        raise PermissionDenied


@login_required
def executor_list(request: HttpRequest) -> HttpResponse:
    _admin_only(request)
    status = 200
    if request.method == "POST":
        data = request.POST
        try:
            if data.get("kind") == "local":
                binds = [line.strip() for line in data.get("binds", "").splitlines() if line.strip()]
                image = executors.local_add(
                    user=request.user,  # type: ignore[arg-type]
                    name=data.get("name", ""),
                    command=data.get("command", ""),
                    folder=data.get("folder", ""),
                    binds=binds,
                    description=data.get("description", ""),
                )
            else:
                image = executors.image_add(
                    user=request.user,  # type: ignore[arg-type]
                    name=data.get("name", ""),
                    reference=data.get("reference", ""),
                    description=data.get("description", ""),
                )
        except ServiceError as exc:
            messages.error(request, exc.message)
            status = 422
        else:
            messages.success(request, _("Executor %(name)s added.") % {"name": image.name})
            return redirect("executor_detail", image_id=image.pk)
    images = ExecutorImage.objects.prefetch_related("related")
    return render(request, "models_app/executor_list.html", {"images": images, "form": request.POST}, status=status)


@login_required
def executor_detail(request: HttpRequest, image_id: int) -> HttpResponse:
    _admin_only(request)
    image = get_object_or_404(ExecutorImage, pk=image_id)
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "copy":
                copy = executors.image_copy(
                    user=request.user,  # type: ignore[arg-type]
                    image=image,
                    name=request.POST.get("name", ""),
                    description=request.POST.get("description", ""),
                )
                messages.success(request, _("Copied as %(name)s.") % {"name": copy.name})
                return redirect("executor_detail", image_id=copy.pk)
            if action == "conformance":
                conformance_start(
                    user=request.user,  # type: ignore[arg-type]
                    image=image,
                    gpu_count=_int(request.POST.get("gpu_count"), 0),
                )
                messages.success(request, _("Conformance check started."))
                return redirect("executor_detail", image_id=image.pk)
            if action == "delete":
                executors.image_delete(user=request.user, image=image)  # type: ignore[arg-type]
                messages.success(request, _("Executor deleted."))
                return redirect("executor_list")
            related = ExecutorImage.objects.filter(pk__in=request.POST.getlist("related"))
            executors.image_update(
                user=request.user,  # type: ignore[arg-type]
                image=image,
                name=request.POST.get("name", ""),
                description=request.POST.get("description", ""),
                is_shared=request.POST.get("is_shared") == "on",
                related=list(related),
            )
            messages.success(request, _("Executor saved."))
            return redirect("executor_detail", image_id=image.pk)
        except ServiceError as exc:
            messages.error(request, exc.message)
    check = Task.objects.filter(pk=image.conformance.get("task")).first()
    context = {
        "image": image,
        "templates": {kind: _yaml(image.templates[kind]) for kind in image.task_types},
        "others": ExecutorImage.objects.exclude(pk=image.pk),
        "related_ids": set(image.related.values_list("pk", flat=True)),
        "tasks": image.tasks.order_by("-created_at")[:20],
        "check": check,
        "points": [{**p, "title": point_title(p["key"])} for p in (check.result.get("points", []) if check else [])],
    }
    return render(request, "models_app/executor_detail.html", context)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value or default)
    except ValueError:
        return default
