from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings


@shared_task(name="tasks.reconcile")
def reconcile() -> list[int]:
    """Periodic (Celery beat) and at each worker's start: tasks whose worker was lost end in error."""
    from models_app.services import tasks_reconcile

    return tasks_reconcile(stale_seconds=settings.YMIR_TASK_STALE_SECONDS)


@worker_ready.connect
def _reconcile_at_start(**_kwargs: object) -> None:
    reconcile.delay()
