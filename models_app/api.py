from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema

from models_app.models import Task

router = Router(tags=["tasks"])


class TaskOut(Schema):
    id: int
    kind: str
    state: str
    percent: float
    project_id: int | None
    error_code: str
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_error(obj: Task) -> str:
        return obj.error_message


@router.get("/tasks", response=list[TaskOut])
def task_list(request: HttpRequest, state: Task.State | None = None, kind: Task.Kind | None = None) -> list[Task]:
    tasks = Task.objects.filter(user=request.user)  # type: ignore[misc]
    if state:
        tasks = tasks.filter(state=state)
    if kind:
        tasks = tasks.filter(kind=kind)
    return list(tasks.order_by("-created_at")[:200])


@router.get("/tasks/{task_id}", response=TaskOut)
def task_get(request: HttpRequest, task_id: int) -> Task:
    return get_object_or_404(Task, pk=task_id, user=request.user)
