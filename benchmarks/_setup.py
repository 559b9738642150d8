"""Shared set-up for benchmarks: Django on a scratch database (a fresh PostgreSQL database when
DATABASE_URL names a server, else SQLite in a temporary folder) and a scratch workspace."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def django_on_scratch_database() -> Path:
    sys.path.insert(0, str(ROOT))
    scratch = Path(tempfile.mkdtemp(prefix="ymir-bench-"))
    atexit.register(shutil.rmtree, scratch, True)
    os.environ["YMIR_DATA_DIR"] = str(scratch)
    os.environ["YMIR_WORKSPACE"] = str(scratch / "workspace")
    url = os.environ.get("DATABASE_URL")
    if url:
        import psycopg

        parts = urlsplit(url)
        name = f"ymir_bench_{uuid.uuid4().hex[:8]}"
        admin = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ.setdefault("YMIR_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ymir.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from core.workspace import workspace_prepare

    workspace_prepare()
    call_command("migrate", verbosity=0)
    call_command("collectstatic", verbosity=0, interactive=False)
    return scratch
