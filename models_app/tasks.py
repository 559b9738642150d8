from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

logger = logging.getLogger(__name__)


@shared_task(name="tasks.reconcile")
def reconcile() -> list[int]:
    """Periodic (Celery beat): in-process tasks whose worker was lost end in error, runs on hosts gone quiet
    end in error, and every live host is asked to follow its runs (on its own queue)."""
    from models_app import jobs
    from models_app.conformance import restart_lost
    from models_app.models import WorkerHost
    from models_app.services import tasks_reconcile

    lost = tasks_reconcile(stale_seconds=settings.YMIR_TASK_STALE_SECONDS)
    lost += jobs.reconcile_lost_hosts(settings.YMIR_TASK_STALE_SECONDS)
    restart_lost(settings.YMIR_TASK_STALE_SECONDS)
    for host in WorkerHost.objects.values_list("name", flat=True):
        reconcile_host.apply_async((host,), queue=jobs.host_queue(host), expires=settings.YMIR_TASK_STALE_SECONDS)
    return lost


@shared_task(name="executor.reconcile_host")
def reconcile_host(host: str) -> list[int]:
    from models_app import jobs

    running = jobs.reconcile_host(host)
    for task_id in running:
        executor_follow.apply_async((task_id,), queue=jobs.host_queue(host), countdown=settings.YMIR_FOLLOW_SECONDS)
    return running


@shared_task(name="executor.launch", bind=True, max_retries=None)
def executor_launch(self, task_id: int) -> str:  # type: ignore[no-untyped-def]
    """Short: take GPUs, write the task folder, start the run, record it; then hand over to ``follow``."""
    from models_app import jobs

    outcome = jobs.launch(task_id)
    if outcome == "waiting":
        raise self.retry(countdown=settings.YMIR_GPU_WAIT_SECONDS)
    if outcome == "launched":
        executor_follow.apply_async((task_id,), queue=jobs.host_queue(jobs.host_name()))
    return outcome


@shared_task(name="executor.follow")
def executor_follow(task_id: int) -> bool:
    """Poll a run once on its host; re-scheduled while it goes on (a lost follower is picked up by
    the reconciler)."""
    from models_app import jobs

    going = jobs.follow(task_id)
    if going:
        executor_follow.apply_async(
            (task_id,), queue=jobs.host_queue(jobs.host_name()), countdown=settings.YMIR_FOLLOW_SECONDS
        )
    return going


@shared_task(name="executor.conformance")
def conformance_step(check_id: int, chain: str) -> bool:
    """One step of an executor conformance check; re-scheduled while its runs go on."""
    from models_app.conformance import advance, schedule

    going = advance(check_id, chain)
    if going:
        schedule(check_id, chain, settings.YMIR_FOLLOW_SECONDS)
    return going


@shared_task(name="executor.image_add")
def executor_image_add(image_id: int) -> str:
    from models_app.executors import image_inspect

    return image_inspect(image_id)


@worker_ready.connect
def _reconcile_at_start(**_kwargs: object) -> None:
    """Each worker at start: declare its host and GPUs, and follow its host's runs again."""
    from models_app import jobs

    try:
        jobs.host_register()
    except Exception:  # the database may not be migrated yet; the beat will catch up
        logger.exception("could not register this worker host")
        return
    reconcile_host.apply_async((jobs.host_name(),), queue=jobs.host_queue(jobs.host_name()))
    reconcile.delay()


@shared_task(name="evaluation.run", acks_late=True)
def evaluation_task(task_id: int) -> None:
    from models_app.evaluations import evaluation_run

    evaluation_run(task_id)
