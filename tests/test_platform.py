"""Deployment pieces: compose file, security settings, request limits, workspace and container engine."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
import yaml
from django.core.checks import run_checks
from django.test import Client

from core.engine import engine_status
from core.workspace import workspace_status
from tests.conftest import ROOT, require


def test_compose_file_declares_the_production_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "web", "worker", "beat", "gpu-worker"):
        assert name in services, name
    for name in ("postgres", "redis", "web", "worker"):
        assert "healthcheck" in services[name], name
    assert "workspace" in compose["volumes"]
    for name in ("web", "worker", "beat", "gpu-worker"):
        mounts = [m if isinstance(m, str) else m["source"] for m in services[name].get("volumes", [])]
        assert any(m.split(":")[0] == "workspace" for m in mounts), name
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres")
        assert services[name]["environment"]["YMIR_PRODUCTION"] in ("1", 1, True)
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "gunicorn" in " ".join(services["web"]["command"])
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_deploy_check_passes_under_production_settings(tmp_path):
    env = {
        **os.environ,
        "YMIR_PRODUCTION": "1",
        "YMIR_SECRET_KEY": secrets.token_urlsafe(50),
        "YMIR_ALLOWED_HOSTS": "ymir.example.org",
        "YMIR_WORKSPACE": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("YMIR_SECRET_KEY", "DJANGO_SECRET_KEY")}
    env.update({"YMIR_PRODUCTION": "1", "YMIR_DATA_DIR": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "YMIR_SECRET_KEY must be set" in result.stderr
    assert not (tmp_path / "secret_key").exists()


def test_embedded_default_generates_and_keeps_a_private_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("YMIR_SECRET_KEY", "DJANGO_SECRET_KEY", "YMIR_PRODUCTION")}
    env["YMIR_DATA_DIR"] = str(tmp_path)
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    argv = [
        sys.executable,
        "-c",
        f"import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'ymir.settings'); django.setup(); {code}",
    ]
    first = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert first == second and len(first) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_no_default_password_is_shipped():
    ymir_default = "".join(str(i) for i in range(1, 9))  # YMIR shipped this admin password
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".yml", ".yaml", ".sh", ".md", ".html", ".env") and not any(
            part.startswith(".venv") for part in path.parts
        ):
            assert ymir_default not in path.read_text(errors="ignore"), path


@pytest.mark.django_db
def test_oversized_bodies_are_refused_before_reading(settings):
    settings.YMIR_MAX_REQUEST_BYTES = 1000
    body = "x" * 2000
    response = Client().post("/api/v1/auth/token", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert Client().post("/accounts/login/", data={"username": "u" * 2000}).status_code == 413


@pytest.mark.django_db
def test_pages_are_not_framed_and_sniffing_is_off():
    response = Client().get("/accounts/login/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_workspace_check_reports_unwritable_folder(settings, tmp_path):
    settings.YMIR_WORKSPACE = tmp_path / "ws"
    assert [m.id for m in run_checks(tags=["ymir"])] == ["ymir.W002"]
    settings.YMIR_WORKSPACE.mkdir()
    assert run_checks(tags=["ymir"]) == []
    assert workspace_status().free_bytes
    if os.geteuid() != 0:  # root writes anywhere; the check then has nothing to catch
        settings.YMIR_WORKSPACE.chmod(0o500)
        assert [m.id for m in run_checks(tags=["ymir"])] == ["ymir.E002"]
        settings.YMIR_WORKSPACE.chmod(0o700)


@pytest.mark.engine
def test_container_engine_is_reachable_through_the_docker_api():
    if not os.environ.get("DOCKER_HOST"):
        require("YMIR_REQUIRE_ENGINE", "no DOCKER_HOST: no container engine configured")
    status = engine_status(timeout=10)
    assert status.available, status.error
    assert status.version


def test_engine_status_reports_an_unreachable_engine(settings, tmp_path):
    settings.DOCKER_HOST = f"unix://{tmp_path}/nothing.sock"
    status = engine_status(timeout=2)
    assert not status.available and status.error
