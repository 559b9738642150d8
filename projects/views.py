from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from core.errors import ServiceError
from datasets.selectors import versions_of_project
from projects.forms import ProjectForm
from projects.selectors import project_for, projects_of
from projects.services import project_create


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
    datasets = versions_of_project(project.pk)
    return render(request, "projects/project_detail.html", {"project": project, "tasks": tasks, "datasets": datasets})
