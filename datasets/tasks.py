from __future__ import annotations

from celery import shared_task


@shared_task(name="datasets.import", acks_late=True)
def import_dataset(task_id: int) -> None:
    from datasets.services import import_execute

    import_execute(task_id)
