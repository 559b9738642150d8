"""A Celery task makes a round trip through the configured broker (real Redis in CI) with a real worker."""

from __future__ import annotations

import os
import uuid

import pytest
from django.conf import settings

from core.tasks import ping
from tests.conftest import require, start_worker

pytestmark = pytest.mark.worker


def test_task_round_trip_through_a_real_worker_process(tmp_path):
    if os.environ.get("REDIS_URL"):
        assert settings.CELERY_BROKER_URL.startswith("redis://")
    elif os.environ.get("YMIR_REQUIRE_REDIS"):
        require("YMIR_REQUIRE_REDIS", "REDIS_URL is not set")
    queue = f"roundtrip-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, os.environ.copy(), tmp_path / "worker.log")
    try:
        payload = uuid.uuid4().hex
        result = ping.apply_async(args=[payload], queue=queue).get(timeout=90)
        assert result["payload"] == payload
        assert result["db"] is True
        assert result["pid"] == worker.pid  # the solo pool runs tasks in the worker process itself
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]


def test_celery_accepts_json_only():
    from ymir.celery import app

    assert list(app.conf.accept_content) == ["json"]
    assert app.conf.task_serializer == "json" and app.conf.result_serializer == "json"
    with pytest.raises(Exception, match=r"pickle|disabled|not allowed|ContentDisallowed"):
        from kombu.serialization import loads

        loads(b"\x80\x04K\x01.", "application/x-python-serialize", "binary", accept=app.conf.accept_content)
