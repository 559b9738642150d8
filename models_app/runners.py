"""Runners: one interface, two ways to run an executor over a prepared task folder.

- ``DockerRunner``: the Docker Engine API (the ``docker`` SDK; podman's service speaks it too). ``in`` is
  mounted read-only at /in, ``out`` at /out, GPUs by device request, no network unless the image asks,
  a non-root uid, the container named and labelled after the task. Argument lists only, never a shell.
- ``LocalRunner``: the executor as a local program under bubblewrap, which gives it the same view (/in
  read-only, /out, /img-man, no network) without a container engine. A small supervisor (``shim.py``) in
  its own session outlives the worker, caps the log and records the exit status.

Both are idempotent at launch (a redelivered message adopts the run already there) and report a run as
running, exited (with its status) or gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

from models_app.contract import LOG_FILE

EXIT_FILE = ".ymir-exit"
SHIM = Path(__file__).with_name("shim.py")


class RunnerError(Exception):
    """The run could not be started or followed; the message is for people."""


@dataclass(frozen=True)
class RunSpec:
    task_id: int
    in_dir: Path
    out_dir: Path
    reference: str = ""
    command: list[str] = field(default_factory=list)
    folder: str = ""
    binds: list[str] = field(default_factory=list)
    gpu_ids: list[str] = field(default_factory=list)
    shm_size: str = ""
    network: bool = False

    @property
    def name(self) -> str:
        return f"ymir-task-{instance_id()}-{self.task_id}"


@dataclass(frozen=True)
class Poll:
    state: str  # running | exited | gone
    exit_code: int | None = None
    log_tail: str = ""


def instance_id() -> str:
    """Tells this installation's containers from another's on a shared engine (task ids repeat)."""
    explicit = getattr(settings, "YMIR_INSTANCE", "")
    return explicit or hashlib.sha256(str(Path(settings.YMIR_WORKSPACE).resolve()).encode()).hexdigest()[:8]


def executor_uid() -> tuple[int, int]:
    configured = settings.YMIR_EXECUTOR_UID
    if configured:
        return configured, configured
    uid = os.getuid()
    return (uid, os.getgid()) if uid else (1000, 1000)


def tail_of(path: Path, size: int = 8192) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Runner(Protocol):
    kind: str

    def launch(self, spec: RunSpec) -> str: ...

    def poll(self, run_ref: str, spec: RunSpec) -> Poll: ...

    def stop(self, run_ref: str) -> None: ...

    def finish(self, run_ref: str, spec: RunSpec) -> None: ...


# --- Docker -----------------------------------------------------------------------------------------


def labels_of(spec: RunSpec) -> dict[str, str]:
    return {"ymir.task": str(spec.task_id), "ymir.instance": instance_id()}


def container_options(spec: RunSpec) -> dict[str, Any]:
    """What the container is created with (a test reads it to check GPU requests it cannot run here)."""
    from docker.types import DeviceRequest, Mount

    uid, gid = executor_uid()
    options: dict[str, Any] = {
        "image": spec.reference,
        "name": spec.name,
        "labels": labels_of(spec),
        "detach": True,
        "mounts": [
            Mount("/in", str(spec.in_dir), type="bind", read_only=True),
            Mount("/out", str(spec.out_dir), type="bind", read_only=False),
        ],
        "user": f"{uid}:{gid}",
        "environment": {"YMIR_TASK_ID": str(spec.task_id), "PYTHONUNBUFFERED": "1"},
    }
    if not spec.network:
        options["network_mode"] = "none"
    if spec.gpu_ids:  # the container sees them as 0..n-1
        options["device_requests"] = [DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])]
    shm = spec.shm_size or (f"{16 * len(spec.gpu_ids)}G" if spec.gpu_ids else "")
    if shm:  # YMIR sizes shared memory per GPU unless the config says
        options["shm_size"] = shm
    return options


class DockerRunner:
    kind = "docker"

    def __init__(self, base_url: str | None = None) -> None:
        import docker

        url = base_url or settings.DOCKER_HOST or "unix:///var/run/docker.sock"
        try:
            self.client = docker.DockerClient(base_url=url, timeout=60)
        except Exception as exc:
            raise RunnerError(f"the container engine at {url} cannot be reached: {exc}") from None

    def _find(self, spec: RunSpec) -> Any:
        label_filter = [f"{k}={v}" for k, v in labels_of(spec).items()]
        found = self.client.containers.list(all=True, filters={"label": label_filter})
        return found[0] if found else None

    def launch(self, spec: RunSpec) -> str:
        import docker.errors

        existing = self._find(spec)
        if existing is not None:  # a redelivered launch adopts the run it started before
            return str(existing.id)
        try:
            container = self.client.containers.run(**container_options(spec))
        except docker.errors.ImageNotFound:
            raise RunnerError(f"the image {spec.reference} is not on this host") from None
        except docker.errors.APIError as exc:
            raise RunnerError(f"the container engine refused to start the executor: {exc.explanation or exc}") from None
        return str(container.id)

    def _get(self, run_ref: str) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(run_ref)
        except docker.errors.NotFound:
            return None

    def poll(self, run_ref: str, spec: RunSpec) -> Poll:
        container = self._get(run_ref)
        if container is None:
            return Poll("gone")
        status = container.attrs.get("State", {})
        tail = container.logs(tail=100).decode("utf-8", "replace")[-8192:]
        if container.status in ("exited", "dead", "stopped") or status.get("Status") in ("exited", "dead"):
            return Poll("exited", int(status.get("ExitCode", -1)), tail)
        return Poll("running", None, tail)

    def stop(self, run_ref: str) -> None:
        container = self._get(run_ref)
        if container is not None:
            container.remove(force=True)

    def finish(self, run_ref: str, spec: RunSpec) -> None:
        """Copy the container's output into /out's log file (capped), then remove the container."""
        container = self._get(run_ref)
        if container is None:
            return
        limit, written, dropped = settings.YMIR_EXECUTOR_LOG_LIMIT, 0, 0
        with (spec.out_dir / LOG_FILE).open("ab") as log:
            for chunk in container.logs(stream=True, follow=False):
                room = limit - written
                if room > 0:
                    log.write(chunk[:room])
                    written += min(room, len(chunk))
                dropped += max(0, len(chunk) - max(room, 0))
            if dropped:
                log.write(f"\n[ymir: log cut at {limit} bytes; {dropped} more bytes were dropped]\n".encode())
        container.remove(force=True)


# --- local --------------------------------------------------------------------------------------------


def bwrap_argv(spec: RunSpec) -> list[str]:
    """The bubblewrap command line giving a local program the container's view."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RunnerError("bubblewrap (bwrap) is not installed; the local runner needs it (Debian: bubblewrap)")
    if not spec.command:
        raise RunnerError("this local executor has no command")
    argv = [bwrap, "--tmpfs", "/", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for system in ("/lib", "/lib64", "/bin", "/sbin"):
        argv += ["--ro-bind-try", system, system]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]  # noqa: S108 (inside the sandbox)
    # After /tmp: an executor folder or environment may live under the host's /tmp.
    for path in spec.binds:
        argv += ["--ro-bind", path, path]
    if spec.folder:
        argv += ["--ro-bind", spec.folder, spec.folder]
        if (Path(spec.folder) / "img-man").is_dir():
            argv += ["--ro-bind", str(Path(spec.folder) / "img-man"), "/img-man"]
    argv += ["--ro-bind", str(spec.in_dir), "/in", "--bind", str(spec.out_dir), "/out"]
    if not spec.network:
        argv.append("--unshare-net")
    argv += ["--unshare-pid", "--die-with-parent", "--new-session", "--clearenv"]
    if os.getuid() == 0:  # never root inside: a user namespace maps the executor's uid onto ours
        uid, gid = executor_uid()
        argv += ["--unshare-user", "--uid", str(uid), "--gid", str(gid)]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",  # noqa: S108 (inside the sandbox)
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "YMIR_TASK_ID": str(spec.task_id),
        "CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_ids),
    }
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", spec.folder or "/out", "--", *spec.command]
    return argv


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process, or None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


class LocalRunner:
    kind = "local"

    def launch(self, spec: RunSpec) -> str:
        ref_file = spec.out_dir.parent / "local-run"
        if ref_file.exists():  # a redelivered launch adopts the run it started before
            return ref_file.read_text().strip()
        argv = bwrap_argv(spec)
        # -P: the script's folder (this app) is not put on sys.path, so no module here shadows the stdlib
        shim = [sys.executable, "-P", str(SHIM), str(spec.out_dir / LOG_FILE), str(settings.YMIR_EXECUTOR_LOG_LIMIT)]
        shim += [str(spec.out_dir.parent / EXIT_FILE), "--", *argv]
        process = subprocess.Popen(
            shim,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(spec.out_dir.parent / "runner.err").open("ab"),
            start_new_session=True,
            close_fds=True,
        )
        started = _proc_start(process.pid)
        run_ref = f"{process.pid}:{started[1] if started else ''}"
        ref_file.write_text(run_ref)
        return run_ref

    def _alive(self, run_ref: str) -> bool:
        pid_text, _sep, start = run_ref.partition(":")
        pid = int(pid_text)
        with contextlib.suppress(ChildProcessError):  # reap our own child, if the shim is one
            os.waitpid(pid, os.WNOHANG)
        seen = _proc_start(pid)
        return seen is not None and seen[1] == start and seen[0] not in ("Z", "X")

    def poll(self, run_ref: str, spec: RunSpec) -> Poll:
        tail = tail_of(spec.out_dir / LOG_FILE)
        if self._alive(run_ref):
            return Poll("running", None, tail)
        exit_file = spec.out_dir.parent / EXIT_FILE
        if exit_file.exists():
            try:
                return Poll("exited", int(exit_file.read_text().strip()), tail)
            except ValueError:
                pass
        return Poll("gone", None, tail)

    def stop(self, run_ref: str) -> None:
        if self._alive(run_ref):
            pid = int(run_ref.partition(":")[0])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def finish(self, run_ref: str, spec: RunSpec) -> None:
        """The shim already wrote the log."""


def runner_for(kind: str) -> Runner:
    if kind == "docker":
        return DockerRunner()
    if kind == "local":
        return LocalRunner()
    raise RunnerError(f"unknown runner {kind!r}")
