"""The Celery application: JSON only, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from kombu import Queue

import ymir.broker  # noqa: F401  (registers the embedded default's broker transport, ymirfs://)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ymir.settings")

app = Celery("ymir")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def ensure_broker_folders() -> None:
    """The filesystem transport (embedded default) needs its folders before the first message."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)
    backend = str(app.conf.result_backend or "")
    if backend.startswith("file://"):
        Path(backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


ensure_broker_folders()


def queues_purge(names: list[str]) -> int:
    """Drop every message waiting on these queues; answers how many. For a fresh start where messages left by
    an earlier worker (its restored, unacknowledged follow-ups) name ids of another database: the test suite's
    workers and the benchmarks' use it, the platform never does."""
    dropped = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for name in names:
            dropped += int(Queue(name, channel=channel).purge() or 0)
    return dropped
