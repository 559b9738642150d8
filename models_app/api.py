from __future__ import annotations

from datetime import datetime

from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from ninja import Router, Schema

from core.errors import Conflict, NotFound
from models_app.conformance import conformance_start
from models_app.contract import LOG_FILE
from models_app.errors import error_meaning
from models_app.executors import image_add
from models_app.jobs import cancel, queue_position
from models_app.models import ExecutorImage, Task
from models_app.taskdir import task_dir
from models_app.views import tasks_visible_to

router = Router(tags=["tasks"])


class TaskOut(Schema):
    id: int
    kind: str
    state: str
    percent: float
    project_id: int | None
    error_code: str
    error: str
    error_meaning: str
    image_id: int | None
    host: str
    gpu_ids: str
    queue_position: int | None
    config: dict
    result: dict
    log_tail: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_error(obj: Task) -> str:
        return obj.error_message

    @staticmethod
    def resolve_error_meaning(obj: Task) -> str:
        return error_meaning(obj.error_code) if obj.error_code else ""

    @staticmethod
    def resolve_queue_position(obj: Task) -> int | None:
        return queue_position(obj)


@router.get("/tasks", response=list[TaskOut])
def task_list(
    request: HttpRequest, state: Task.State | None = None, kind: Task.Kind | None = None, project: int | None = None
) -> list[Task]:
    tasks = tasks_visible_to(request.user)  # type: ignore[arg-type]
    if project:
        tasks = tasks.filter(project_id=project)
    if state:
        tasks = tasks.filter(state=state)
    if kind:
        tasks = tasks.filter(kind=kind)
    return list(tasks.order_by("-created_at")[:200])


@router.get("/tasks/{task_id}", response=TaskOut)
def task_get(request: HttpRequest, task_id: int) -> Task:
    return get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]


@router.post("/tasks/{task_id}/cancel", response={202: TaskOut})
def task_cancel(request: HttpRequest, task_id: int) -> tuple[int, Task]:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    if not cancel(task):
        raise Conflict(_("This task has already ended."), code="task_final")
    task.refresh_from_db()
    return 202, task


@router.get("/tasks/{task_id}/log")
def task_log(request: HttpRequest, task_id: int) -> FileResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    path = task_dir(task.pk) / "out" / LOG_FILE
    if not path.is_file():
        raise NotFound(_("This task has no log."), code="no_log")
    return FileResponse(path.open("rb"), filename=f"task-{task.pk}.log", content_type="text/plain")


class ExecutorOut(Schema):
    id: int
    name: str
    kind: str
    reference: str
    state: str
    task_types: list[str]
    templates: dict
    is_shared: bool
    error_message: str
    conformance: dict


class ExecutorIn(Schema):
    name: str
    reference: str
    description: str = ""


@router.get("/executors", response=list[ExecutorOut])
def executor_list(request: HttpRequest) -> list[ExecutorImage]:
    user = request.user
    images = ExecutorImage.objects.all()
    return list(images if user.is_platform_admin else images.filter(is_shared=True))  # type: ignore[union-attr]


@router.post("/executors", response={202: ExecutorOut})
def executor_add(request: HttpRequest, body: ExecutorIn) -> tuple[int, ExecutorImage]:
    return 202, image_add(user=request.user, name=body.name, reference=body.reference, description=body.description)  # type: ignore[arg-type]


class ConformanceIn(Schema):
    gpu_count: int = 0


@router.post("/executors/{image_id}/conformance", response={202: TaskOut})
def executor_conformance(request: HttpRequest, image_id: int, body: ConformanceIn) -> tuple[int, Task]:
    """Admins: run the image through a tiny training, mining and inference job; the report lands on the image."""
    if not request.user.is_platform_admin:  # type: ignore[union-attr]
        raise NotFound(_("No such executor."), code="not_found")
    image = ExecutorImage.objects.filter(pk=image_id).first()
    if image is None:
        raise NotFound(_("No such executor."), code="not_found")
    return 202, conformance_start(user=request.user, image=image, gpu_count=body.gpu_count)  # type: ignore[arg-type]
