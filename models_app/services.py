"""Task state changes. The task row is the truth; updates after a final state are ignored."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from core.models import User
from models_app.models import Task
from projects.models import Project

State = Task.State
logger = logging.getLogger(__name__)


def task_create(
    *, user: User, kind: str, project: Project | None = None, parameters: dict[str, Any] | None = None
) -> Task:
    return Task.objects.create(user=user, project=project, kind=kind, parameters=parameters or {})


def task_begin(task_id: int) -> Task | None:
    """Mark running (again, on redelivery); None when the task is already final, or when it is running with a
    heartbeat younger than ``YMIR_TASK_STALE_SECONDS``: a second delivery while the first run goes on (the broker's
    visibility timeout passed during a long import), which must not run beside it. A run whose heartbeat went
    stale is resumed (or already failed by the reconciler)."""
    from django.conf import settings

    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id).first()
        if task is None:
            logger.warning("task %s does not exist; message dropped", task_id)
            return None
        if task.is_final:
            return None
        fresh = timezone.now() - timedelta(seconds=settings.YMIR_TASK_STALE_SECONDS)
        if task.state == State.RUNNING and task.heartbeat_at is not None and task.heartbeat_at > fresh:
            logger.warning(
                "task %s is running elsewhere (heartbeat %s); duplicate delivery dropped", task_id, task.heartbeat_at
            )
            return None
        task.state = State.RUNNING
        task.started_at = task.started_at or timezone.now()
        task.heartbeat_at = timezone.now()
        task.save(update_fields=["state", "started_at", "heartbeat_at"])
    return task


def task_progress(task_id: int, percent: float) -> None:
    """Progress only moves forward, and only while running; every update is also a heartbeat."""
    Task.objects.filter(pk=task_id, state=State.RUNNING).update(heartbeat_at=timezone.now())
    Task.objects.filter(pk=task_id, state=State.RUNNING, percent__lte=percent).update(
        percent=max(0.0, min(1.0, percent))
    )


LOST_CODE = "worker_lost"


def tasks_reconcile(*, stale_seconds: int) -> list[int]:
    """Running in-process tasks whose worker stopped beating are lost: error, with a clear message.

    Their outputs are failed by the app that owns them (datasets: pending versions become errors and their
    rows are deleted, so they can be retried). Returns the ids of the tasks marked.
    """
    from datasets.services import versions_fail_for_task

    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    lost = list(
        Task.objects.filter(state__in=(State.RUNNING, State.QUEUED), image__isnull=True)
        .exclude(kind=Task.Kind.LABELLING)  # people label for days; the labelling poll follows these
        .filter(models.Q(heartbeat_at__lt=cutoff) | models.Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
        .values_list("id", flat=True)
    )
    message = "The worker running this task stopped (killed or lost) before it finished. Retry it."
    for task_id in lost:
        versions_fail_for_task(task_id, LOST_CODE, message)
        task_finish(task_id, state=State.ERROR, error_code=LOST_CODE, error_message=message)
    return lost


def task_finish(task_id: int, *, state: str, error_code: str = "", error_message: str = "") -> bool:
    """Move to a final state once; False if it already was final."""
    updates: dict[str, Any] = {
        "state": state,
        "finished_at": timezone.now(),
        "error_code": error_code,
        "error_message": error_message[:10000],
    }
    if state == State.DONE:
        updates["percent"] = 1.0
    return bool(Task.objects.filter(pk=task_id).exclude(state__in=Task.FINAL_STATES).update(**updates))
