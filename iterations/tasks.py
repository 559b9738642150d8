from __future__ import annotations

from celery import shared_task


@shared_task(name="iterations.advance")
def iterations_advance() -> int:
    """Periodic (beat): move every active loop on (landed runs, evaluations, the random control, next rounds)."""
    from iterations.models import Iteration
    from iterations.services import iteration_advance

    ids = list(Iteration.objects.filter(state=Iteration.State.ITERATING).values_list("id", flat=True))
    for iteration_id in ids:
        iteration_advance(iteration_id)
    return len(ids)
