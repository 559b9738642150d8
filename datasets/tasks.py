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


@shared_task(name="labelling.push", bind=True, max_retries=None, acks_late=True)
def labelling_push(self, labelling_id: int) -> str:  # type: ignore[no-untyped-def]
    """Send a labelling to Label Studio; while the tool is unreachable, try again later (the poll also does)."""
    from django.conf import settings

    from datasets.labelling import labelling_push as push

    outcome = push(labelling_id)
    if outcome == "unreachable" and self.request.retries < 20:
        raise self.retry(countdown=min(settings.YMIR_LABELLING_POLL_SECONDS, 5 * 2**self.request.retries))
    return outcome


@shared_task(name="labelling.collect", bind=True, max_retries=None, acks_late=True)
def labelling_collect(self, labelling_id: int) -> int | None:  # type: ignore[no-untyped-def]
    """Import what is labelled as a new version (ends the labelling when every image is labelled)."""
    from django.conf import settings

    from datasets.labelling import labelling_collect as collect
    from datasets.labelstudio import ToolUnreachable
    from datasets.models import Labelling

    labelling = Labelling.objects.select_related("task").filter(pk=labelling_id).first()
    if labelling is None or labelling.task.is_final:
        return None
    try:
        version = collect(labelling_id, finish=labelling.labelled >= labelling.total > 0)
    except ToolUnreachable as exc:
        from datasets.labelling import mark_unreachable

        mark_unreachable(labelling_id, str(exc))
        Labelling.objects.filter(pk=labelling_id).update(collect_requested=True)
        raise self.retry(countdown=settings.YMIR_LABELLING_POLL_SECONDS) from exc
    return version.pk if version else None


@shared_task(name="labelling.sync")
def labelling_sync(labelling_id: int) -> str:
    from datasets.labelling import labelling_sync as sync

    return sync(labelling_id)


@shared_task(name="labelling.poll")
def labelling_poll() -> int:
    """Periodic (beat): the fallback when webhooks do not arrive, and retries while the tool was unreachable."""
    from datasets.labelling import labellings_poll

    return labellings_poll()
