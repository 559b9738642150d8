from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from core.errors import ServiceError
from datasets.models import DatasetVersion, Labelling
from datasets.selectors import versions_of_project
from models_app.models import ModelVersion
from projects.forms import ProjectForm
from projects.selectors import project_for, projects_of
from projects.services import project_create, project_delete, project_update


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                project = project_create(owner=request.user, **form.cleaned_data)  # type: ignore[arg-type]
            except ServiceError as exc:
                form.add_error("name", exc.message)
            else:
                messages.success(request, _("Project %(name)s created.") % {"name": project.name})
                return redirect("project_detail", project_id=project.pk)
        status = 422
    return render(
        request,
        "projects/project_list.html",
        {"projects": projects_of(request.user), "form": form},  # type: ignore[arg-type]
        status=status,
    )


@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request.user, project_id)  # type: ignore[arg-type]
    tasks = project.tasks.order_by("-created_at")[:20]
    datasets = list(versions_of_project(project.pk))
    _attach_labellings(datasets)
    models = ModelVersion.objects.filter(group__project=project).select_related("group", "train_version__group")
    context = {"project": project, "tasks": tasks, "datasets": datasets, "models": models.prefetch_related("stages")}
    return render(request, "projects/project_detail.html", context)


def _attach_labellings(versions: list[DatasetVersion]) -> None:
    """Each version's latest labelling, for the "labelled N of M" of its row."""
    latest: dict[int, Labelling] = {}
    rows = Labelling.objects.filter(source__in=versions).select_related("task").order_by("created_at")
    for labelling in rows:
        latest[labelling.source_id] = labelling
    for version in versions:
        version.labelling = latest.get(version.pk)  # type: ignore[attr-defined]


@login_required
def project_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request.user, project_id)  # type: ignore[arg-type]
    form = ProjectForm(request.POST or None, initial={"name": project.name, "description": project.description})
    if request.method == "POST" and form.is_valid():
        try:
            project_update(project=project, **form.cleaned_data)
        except ServiceError as exc:
            form.add_error("name", exc.message)
        else:
            messages.success(request, _("Saved."))
            return redirect("project_detail", project_id=project.pk)
    return render(request, "projects/project_edit.html", {"project": project, "form": form})


@login_required
def project_delete_view(request: HttpRequest, project_id: int) -> HttpResponse:
    """GET asks for confirmation (the name typed again); POST deletes."""
    project = project_for(request.user, project_id)  # type: ignore[arg-type]
    if request.method == "POST":
        if request.POST.get("confirm_name", "").strip() != project.name:
            messages.error(request, _("Type the project's name to confirm."))
        else:
            try:
                project_delete(project=project)
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, _("Project %(name)s deleted.") % {"name": project.name})
                return redirect("project_list")
    return render(request, "projects/project_delete.html", {"project": project})
