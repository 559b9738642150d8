"""The start command's code path: prepare, migrate, then run the web server and a Celery worker (with beat).

``./ymir.sh start`` installs what is missing and then runs this. It stops both processes cleanly on
SIGINT/SIGTERM, and stops everything if either process dies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.engine import engine_status
from core.models import User
from core.workspace import workspace_prepare, workspace_status
from models_app.jobs import worker_queues

STOP_GRACE_SECONDS = 20


class Command(BaseCommand):
    help = "Start the platform: migrate, then run the web server and a Celery worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("YMIR_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("YMIR_PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=int(os.environ.get("YMIR_WEB_WORKERS", "2")))
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("YMIR_WORKER_CONCURRENCY", "2")))
        parser.add_argument("--ready-timeout", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False
        root = workspace_prepare()
        status = workspace_status()
        if not status.writable:
            raise CommandError(f"The workspace {root} is not writable.")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self._prepare_demo()
        self._register_detector()

        host, port = options["host"], options["port"]
        if _port_busy(host, port):
            raise CommandError(f"Port {port} on {host} is already in use. Choose another with --port.")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        python = sys.executable
        self._spawn(
            "web",
            [
                python,
                "-m",
                "gunicorn",
                "ymir.wsgi:application",
                "--bind",
                f"{host}:{port}",
                "--workers",
                str(options["web_workers"]),
                "--graceful-timeout",
                "10",
                "--timeout",
                "120",
                "--access-logfile",
                "-",
                "--forwarded-allow-ips",
                os.environ.get("YMIR_FORWARDED_ALLOW_IPS", "127.0.0.1"),
            ],
        )
        self._spawn(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "ymir",
                "worker",
                "--beat",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(options["concurrency"]),
                "--hostname",
                "ymir@%h",
                "--queues",
                ",".join(worker_queues()),
                "--schedule",
                str(Path(settings.DATA_DIR) / "celerybeat-schedule"),
            ],
        )
        self._wait_ready(host, port, options["ready_timeout"])
        self._announce(host, port)
        code = self._supervise()
        sys.stdout.flush()
        raise SystemExit(code)

    # --- pieces -----------------------------------------------------------------------------------

    def _register_detector(self) -> None:
        """The default detector executor, as a shared local executor (its environment built by ymir.sh)."""
        from models_app.executors import detector_register

        if detector_register() is None:
            self.stderr.write("The default detector's environment is missing: no built-in executor registered.")

    def _prepare_demo(self) -> None:
        """The first account registered gets the demo project (YMIR_DEMO=0 turns this off)."""
        os.environ.setdefault("YMIR_DEMO", "1")

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {**os.environ, "YMIR_DATA_DIR": str(settings.DATA_DIR), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR, start_new_session=True)
        self.children.append((name, process))

    def _wait_ready(self, host: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.children:
                if process.poll() is not None:
                    self._stop_all()
                    raise CommandError(f"The {name} process exited with code {process.returncode} at start.")
            if _port_busy(host, port):
                return
            time.sleep(0.2)
        self._stop_all()
        raise CommandError(f"The web server did not answer on {host}:{port} within {timeout:.0f} s.")

    def _announce(self, host: str, port: int) -> None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        url = f"http://{shown}:{port}/"
        engine = engine_status()
        db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        broker = "redis" if settings.REDIS_URL else "filesystem (embedded)"
        runner = f"docker API at {engine.host}" if engine.available else "local runner"
        self.stdout.write(f"YMIR is running at {url}")
        self.stdout.write(
            f"  database: {db}; broker: {broker}; executors: {runner}; workspace: {settings.YMIR_WORKSPACE}"
        )
        if User.objects.exists():
            self.stdout.write("  Log in with your account. Press Ctrl+C to stop.")
        else:
            self.stdout.write(
                f"  No account yet: open {url}accounts/register/ and register;"
                " the first account becomes the super admin. Press Ctrl+C to stop."
            )
        self.stdout.flush()

    def _supervise(self) -> int:
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    self.stderr.write(f"The {name} process exited with code {process.returncode}; stopping.")
                    self._stop_all()
                    return 1
            time.sleep(0.5)
        self._stop_all()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        for _name, process in self.children:
            if process.poll() is None:
                process.terminate()  # gunicorn and celery shut their own children down on SIGTERM
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _name, process in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.stdout.write("YMIR stopped.")


def _port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
