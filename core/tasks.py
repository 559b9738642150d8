from __future__ import annotations

import os
import socket

from celery import shared_task
from django.db import connection


@shared_task(name="core.ping")
def ping(payload: str) -> dict[str, object]:
    """A round trip through the broker: echoes the payload and proves the worker reaches the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone() or (0,)
    return {"payload": payload, "db": one == 1, "host": socket.gethostname(), "pid": os.getpid()}
