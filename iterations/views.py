"""Iteration pages: prepare a loop, run each round's steps, read the history and the mAP trend."""

from __future__ import annotations

import json
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from core.models import User
from datasets.models import DatasetVersion, LabelClass
from datasets.selectors import versions_of_project
from iterations import services as loop
from iterations.models import Iteration, Round
from models_app.models import ExecutorImage, ModelStage
from models_app.training import editable_template
from projects.selectors import project_for


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


def _pick(queryset: Any, value: str | None) -> Any:
    return queryset.filter(pk=int(value)).first() if value and value.isdigit() else None


def _settings_from(request: HttpRequest, project_id: int) -> dict[str, Any]:
    data = request.POST if request.method == "POST" else request.GET
    versions = versions_of_project(project_id).filter(state=DatasetVersion.State.READY)
    images = ExecutorImage.objects.filter(state=ExecutorImage.State.READY)
    raw_config = data.get("training_config", "").strip()
    return {
        "name": data.get("name", "loop"),
        "train_version": _pick(versions, data.get("train_version")),
        "pool_version": _pick(versions, data.get("pool_version")),
        "val_version": _pick(versions, data.get("val_version")),
        "test_versions": [v for v in (_pick(versions, t) for t in data.getlist("test_versions")) if v is not None],
        "initial_stage": _pick(
            ModelStage.objects.filter(version__group__project_id=project_id), data.get("initial_stage")
        ),
        "training_image": _pick(images, data.get("training_image")),
        "mining_image": _pick(images, data.get("mining_image")),
        "class_names": data.getlist("class_names"),
        "strategy": data.get("strategy", "entropy"),
        "exclude_seen": data.get("exclude_seen", "1" if request.method == "GET" else "") == "1",
        "top_k": int(data["top_k"]) if data.get("top_k", "").isdigit() else 20,
        "class_balance": data.get("class_balance") == "1",
        "diversity": data.get("diversity") == "1",
        "chunk_size": int(data["chunk_size"]) if data.get("chunk_size", "").isdigit() else 0,
        "training_config_text": raw_config,
        "target_map": data.get("target_map", ""),
        "max_rounds": data.get("max_rounds", ""),
        "random_control": data.get("random_control") == "1",
    }


@login_required
def iteration_home(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(_user(request), project_id)
    active = Iteration.objects.filter(project=project, state=Iteration.State.ITERATING).first()
    if active is not None:
        return redirect("iteration_detail", iteration_id=active.pk)
    return redirect("iteration_new", project_id=project.pk)


@login_required
def iteration_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(_user(request), project_id)
    form = _settings_from(request, project.pk)
    images = ExecutorImage.objects.filter(state=ExecutorImage.State.READY)
    if request.method == "GET" and not request.GET:  # the built-in detector (or the first fit) by default
        form["training_image"] = next((i for i in images if "training" in i.templates), None)
        form["mining_image"] = next((i for i in images if "mining" in i.templates), None)
    if not form["training_config_text"] and form["training_image"] is not None:
        form["training_config_text"] = json.dumps(editable_template(form["training_image"], "training"))
    status = 200
    if request.method == "POST" and request.POST.get("start"):
        try:
            config = json.loads(form["training_config_text"] or "{}")
            if not isinstance(config, dict):
                raise ValueError
        except ValueError:
            messages.error(request, _("The hyper-parameters are a JSON object."))
            status = 422
        else:
            try:
                iteration = loop.iteration_create(
                    user=_user(request),
                    project=project,
                    name=form["name"],
                    train_version=form["train_version"],
                    pool_version=form["pool_version"],
                    val_version=form["val_version"],
                    test_versions=form["test_versions"],
                    initial_stage=form["initial_stage"],
                    training_image=form["training_image"],
                    mining_image=form["mining_image"],
                    class_names=form["class_names"],
                    strategy=form["strategy"],
                    exclude_seen=form["exclude_seen"],
                    chunk_size=form["chunk_size"],
                    top_k=form["top_k"],
                    class_balance=form["class_balance"],
                    diversity=form["diversity"],
                    training_config=config,
                    target_map=float(form["target_map"]) if form["target_map"] else None,
                    max_rounds=int(form["max_rounds"]) if str(form["max_rounds"]).isdigit() else None,
                    random_control=form["random_control"],
                )
            except (ServiceError, ValueError) as exc:
                messages.error(request, exc.message if isinstance(exc, ServiceError) else _("Check the numbers."))
                status = 422
            else:
                first = iteration.rounds.order_by("number").first()
                messages.success(
                    request, _("The loop is ready: start round %(n)d.") % {"n": first.number if first else 0}
                )
                return redirect("iteration_detail", iteration_id=iteration.pk)
    context = {
        "project": project,
        "form": form,
        "missing": loop.missing_settings(form),
        "versions": versions_of_project(project.pk).filter(state=DatasetVersion.State.READY),
        "training_images": [i for i in images if "training" in i.templates],
        "mining_images": [i for i in images if "mining" in i.templates],
        "stages": ModelStage.objects.filter(version__group__project=project).select_related("version__group"),
        "all_labels": LabelClass.objects.order_by("name"),
        "strategies": loop.STRATEGIES,
        "past": Iteration.objects.filter(project=project),
    }
    return render(request, "iterations/iteration_new.html", context, status=status)


def _chart(iteration: Iteration, rows: list[dict[str, Any]]) -> dict[str, Any]:
    numbers = sorted({row["round"].number for row in rows})
    series = []
    for arm, label in ((Round.Arm.MINED, _("mining")), (Round.Arm.RANDOM, _("random control"))):
        values = {row["round"].number: row["val"] for row in rows if row["round"].arm == arm}
        if any(v is not None for v in values.values()):
            series.append({"label": str(label), "data": [values.get(n) for n in numbers]})
    return {
        "id": "map-trend",
        "title": _("mAP@.5:.95 on the validation set, by round"),
        "type": "line",
        "points": True,
        "labels": [str(n) for n in numbers],
        "series": series,
    }


@login_required
def iteration_detail(request: HttpRequest, iteration_id: int) -> HttpResponse:
    iteration = get_object_or_404(Iteration, pk=iteration_id, project__owner=_user(request))
    loop.iteration_advance(iteration.pk)
    iteration.refresh_from_db()
    rows = loop.history(iteration)
    current: list[dict[str, Any]] = []
    for round_ in iteration.rounds.filter(finished_at__isnull=True).select_related(
        "labelling__task", "picked", "prepared"
    ):
        states = loop.step_states(round_)
        steps = []
        for step in loop.STEPS:
            ok, why = loop.can_start(round_, step)
            steps.append(
                {"name": step, "title": loop.step_title(step), "state": states[step], "can_start": ok, "why": why}
            )
        current.append({"round": round_, "steps": steps, "prefill": loop.prefill(round_)})
    # follow while anything runs: a step, or a landed training whose stages and test sets are being evaluated
    busy = any(s["state"] == "running" for c in current for s in c["steps"]) or any(
        c["round"].training_task_id or c["round"].arm == Round.Arm.RANDOM for c in current
    )
    context = {
        "iteration": iteration,
        "project": iteration.project,
        "rows": rows,
        "chart": _chart(iteration, rows),
        "uplift": loop.uplift(iteration),
        "current": current,
        "busy": busy,
        "tests": list(iteration.test_versions.all()),
        "strategies": loop.STRATEGIES,
    }
    if getattr(request, "htmx", False) and request.GET.get("fragment") == "live":
        return render(request, "iterations/iteration_detail.html#live", context)
    return render(request, "iterations/iteration_detail.html", context)


@login_required
@require_POST
def round_step(request: HttpRequest, iteration_id: int, round_id: int, step: str) -> HttpResponse:
    iteration = get_object_or_404(Iteration, pk=iteration_id, project__owner=_user(request))
    round_ = get_object_or_404(Round, pk=round_id, iteration=iteration)
    if step not in loop.STEPS:
        raise Http404
    action = request.POST.get("action", "start")
    options: dict[str, Any] = {"base_url": request.build_absolute_uri("/").rstrip("/")}
    if request.POST.get("top_k", "").isdigit():
        options["top_k"] = int(request.POST["top_k"])
    if request.POST.get("strategy"):
        options["strategy"] = request.POST["strategy"]
    if request.POST.get("mine_options"):  # the mine step's form: an unticked box means off
        options["class_balance"] = request.POST.get("class_balance") == "1"
        options["diversity"] = request.POST.get("diversity") == "1"
    if step == "train":
        options["pretrained"] = request.POST.get("pretrained", "1") == "1"
    if request.POST.get("labellers"):
        options["labellers"] = request.POST["labellers"].replace(",", "\n").splitlines()
    try:
        if action == "skip":
            loop.step_skip(user=_user(request), round_id=round_.pk, step=step)
        elif action == "rerun":
            loop.step_rerun(user=_user(request), round_id=round_.pk, step=step)
        else:
            loop.step_start(user=_user(request), round_id=round_.pk, step=step, options=options)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("%(step)s: done as asked.") % {"step": loop.step_title(step)})
    return redirect("iteration_detail", iteration_id=iteration.pk)


@login_required
@require_POST
def iteration_stop(request: HttpRequest, iteration_id: int) -> HttpResponse:
    iteration = get_object_or_404(Iteration, pk=iteration_id, project__owner=_user(request))
    loop.iteration_finish(iteration)
    messages.success(request, _("The loop is finished; its history stays."))
    return redirect("iteration_detail", iteration_id=iteration.pk)
