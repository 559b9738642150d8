from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client

from core.models import User
from core.tokens import token_issue_login
from tests.factories import PASSWORD, UserFactory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    # Pages render {% static %} without a collectstatic manifest in tests.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    from deployment.services import _serving

    cache.clear()
    _serving.clear()  # the inference service's per-process memory of algorithms (ids repeat across tests)
    yield
    cache.clear()
    _serving.clear()


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def super_admin(db) -> User:
    return UserFactory(role=User.Role.SUPER_ADMIN, username="root_admin")


@pytest.fixture
def admin_user(db) -> User:
    return UserFactory(role=User.Role.ADMIN, username="plain_admin")


@pytest.fixture
def trainer(db) -> User:
    return UserFactory(role=User.Role.TRAINER, username="trainer_one")


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


class ApiClient:
    """Django's test client speaking JSON with a bearer token."""

    def __init__(self, token: str | None = None) -> None:
        self.client = Client()
        self.token = token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str):
        return self.client.get(path, headers=self._headers())

    def delete(self, path: str):
        return self.client.delete(path, headers=self._headers())

    def post(self, path: str, data=None):
        return self.client.post(path, data=data or {}, content_type="application/json", headers=self._headers())

    def post_multipart(self, path: str, data: dict):
        """A form with files (the test client encodes it as multipart)."""
        return self.client.post(path, data=data, headers=self._headers())

    def patch(self, path: str, data=None):
        return self.client.patch(path, data=data or {}, content_type="application/json", headers=self._headers())


def api_as(user: User) -> ApiClient:
    _token, raw = token_issue_login(user=user)
    return ApiClient(raw)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fresh_database_url() -> Iterator[str | None]:
    """A new, empty PostgreSQL database when DATABASE_URL names one (dropped afterwards); None for SQLite."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        yield None
        return
    import psycopg

    parts = urlsplit(url)
    name = f"ymir_it_{uuid.uuid4().hex[:12]}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def data_dir(tmp_path) -> Iterator[Path]:
    path = tmp_path / "data"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def require(flag: str, reason: str) -> None:
    """Skip where a component is absent, except where CI demands it (then fail)."""
    if os.environ.get(flag):
        pytest.fail(f"{reason} (required by {flag})")
    pytest.skip(reason)


@pytest.fixture
def workspace(settings, tmp_path):
    settings.YMIR_WORKSPACE = tmp_path / "workspace"
    settings.YMIR_WORKSPACE.mkdir()
    return settings.YMIR_WORKSPACE


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that fixtures can tell at teardown whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def worker(request, transactional_db, workspace, tmp_path):
    """A real Celery worker process bound to this test's database and workspace (default and host queues),
    which start empty: what earlier tests left there is dropped. When the test fails, its log and the tasks'
    states are printed (in the report's teardown output)."""
    from models_app.jobs import host_name, host_queue
    from ymir.celery import queues_purge

    names = [django_settings.CELERY_TASK_DEFAULT_QUEUE, host_queue(host_name())]
    queues_purge(names)
    queues = ",".join(names)
    env = worker_env(workspace, YMIR_FOLLOW_SECONDS="0.5", YMIR_WORKER_GPUS="")
    log = tmp_path / "worker.log"
    process = start_worker(queues, env, log, loglevel="INFO")
    yield process
    process.terminate()
    process.wait(timeout=60)
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        worker_diagnose(log)


def worker_diagnose(log: Path) -> None:
    """What a failed test's worker did: every task row and the end of the worker's log."""
    from models_app.models import Task

    print("== tasks (id, kind, state, percent, error):")
    for row in Task.objects.order_by("pk").values_list("pk", "kind", "state", "percent", "error_code", "error_message"):
        print("  ", *row)
    text = log.read_text(errors="replace") if log.exists() else ""
    print(f"== worker log, last 200 of {len(text.splitlines())} lines:")
    print("\n".join(text.splitlines()[-200:]))


def worker_env(workspace: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker process bound to this test's database and workspace."""
    env = {**os.environ, "YMIR_WORKSPACE": str(workspace), "YMIR_DB_CONN_MAX_AGE": "0", **extra}
    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))
    else:
        env["YMIR_SQLITE_PATH"] = name
    return env


def start_worker(
    queue: str, env: dict[str, str], log: Path, name: str = "", loglevel: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """A Celery worker process (solo pool: tasks run in the worker process itself) consuming ``queue``
    (comma-separated names)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ymir",
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "--hostname",
            f"{name or queue}@%h",
            "--loglevel",
            loglevel,
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def label_studio(settings, monkeypatch):
    """The Label Studio server of ``YMIR_TEST_LABEL_STUDIO_URL`` / ``_TOKEN`` (CI starts one on loopback), set
    for this process and for workers started after this fixture."""
    from datasets.labelstudio import LabelStudio

    url, token = os.environ.get("YMIR_TEST_LABEL_STUDIO_URL", ""), os.environ.get("YMIR_TEST_LABEL_STUDIO_TOKEN", "")
    if not url or not token:
        require("YMIR_REQUIRE_LABEL_STUDIO", "no Label Studio (YMIR_TEST_LABEL_STUDIO_URL / _TOKEN)")
    settings.YMIR_LABEL_STUDIO_URL, settings.YMIR_LABEL_STUDIO_TOKEN = url, token
    monkeypatch.setenv("YMIR_LABEL_STUDIO_URL", url)
    monkeypatch.setenv("YMIR_LABEL_STUDIO_TOKEN", token)
    return LabelStudio(url, token)
