"""The whole suite, as ``./ymir.sh test`` runs it.

Lint, format, types, migrations, deploy checks, catalogs, then pytest.

Set ``YMIR_TEST_ONLY_PYTEST=1`` to run only pytest (CI's second pass on the embedded default does), or
``YMIR_TEST_ONLY_STATIC=1`` to run only the checks before pytest.
Extra arguments go to pytest.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(title: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    print(f"\n== {title}: {' '.join(argv)}", flush=True)
    result = subprocess.run(argv, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        print(f"\n!! {title} failed (exit {result.returncode})", flush=True)
        sys.exit(result.returncode)


def static_checks(env: dict[str, str]) -> None:
    run("ruff check", [PY, "-m", "ruff", "check", "."])
    run("ruff format", [PY, "-m", "ruff", "format", "--check", "."])
    run("mypy", [PY, "-m", "mypy", "."], env)
    run("migrations", [PY, "manage.py", "makemigrations", "--check", "--dry-run"], env)
    production = {
        **env,
        "YMIR_PRODUCTION": "1",
        "YMIR_SECRET_KEY": secrets.token_urlsafe(50),
        "YMIR_ALLOWED_HOSTS": "ymir.example.org",
    }
    run("deploy check", [PY, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], production)
    if shutil.which("msgfmt"):
        for po in sorted(ROOT.glob("locale/*/LC_MESSAGES/django.po")):
            run("catalog", ["msgfmt", "--check", "-o", os.devnull, str(po)])


def main() -> None:
    data = Path(os.environ.get("YMIR_TEST_DATA_DIR") or tempfile.mkdtemp(prefix="ymir-test-"))
    for sub in ("workspace", "static"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "YMIR_DATA_DIR": str(data), "YMIR_WORKSPACE": str(data / "workspace")}
    env.setdefault("YMIR_DB_CONN_MAX_AGE", "0")  # no connection outlives a test (the test database is dropped)
    print(
        f"database: {'DATABASE_URL' if env.get('DATABASE_URL') else 'embedded SQLite'}; "
        f"broker: {'REDIS_URL' if env.get('REDIS_URL') else 'embedded filesystem'}; "
        f"engine: {env.get('DOCKER_HOST') or 'none'}; data: {data}",
        flush=True,
    )
    if not os.environ.get("YMIR_TEST_ONLY_PYTEST"):
        static_checks(env)
    if os.environ.get("YMIR_TEST_ONLY_STATIC"):
        return
    run("pytest", [PY, "-m", "pytest", *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
