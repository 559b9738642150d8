from __future__ import annotations

from celery import shared_task


@shared_task(name="datasets.import", acks_late=True)
def import_dataset(task_id: int) -> None:
    from datasets.services import import_execute

    import_execute(task_id)


@shared_task(name="datasets.operation", acks_late=True)
def run_operation(task_id: int) -> None:
    from datasets.services import operation_run

    operation_run(task_id)


@shared_task(name="datasets.thumbnails", acks_late=True)
def make_thumbnails(version_id: int) -> int:
    from datasets.services import thumbnails_make

    return thumbnails_make(version_id)
