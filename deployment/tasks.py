from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="deployment.quantize", acks_late=True)
def quantize(algorithm_id: int) -> dict[str, Any]:
    """Dynamic int8 quantisation of a published algorithm, with both graphs' mAP on the validation set."""
    from deployment.services import quantize_and_compare

    return quantize_and_compare(algorithm_id)
