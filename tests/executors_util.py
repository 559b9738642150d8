"""Helpers for executor tests: the contract-test executors as registered images, datasets, waiting."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from core.engine import engine_status
from datasets import classes
from models_app.models import ExecutorImage
from tests.conftest import require
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.factories import ProjectFactory

HERE = Path(__file__).resolve().parent / "executors"
_built: dict[str, str] = {}


def until(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    """Wait for a condition an outside process brings about (a container, a worker), with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def engine_or_skip() -> None:
    if not settings.DOCKER_HOST or not engine_status().available or not shutil.which("podman"):
        require("YMIR_REQUIRE_ENGINE", "no container engine (podman) reachable")


def bwrap_or_skip() -> None:
    if not shutil.which("bwrap"):
        require("YMIR_REQUIRE_ENGINE", "bubblewrap is not installed")


def built_images() -> dict[str, str]:
    if not _built:
        sys.path.insert(0, str(HERE))
        import build_images  # type: ignore[import-not-found]

        podman = os.environ.get("PODMAN", "podman")
        _built.update(contract=build_images.build_contract(podman), sdk=build_images.build_sdk(podman))
    return _built


def contract_executor(runner: str, user, name: str = "contract") -> ExecutorImage:
    """The shell contract-test executor, as a container image or as a local program."""
    from models_app.executors import _read_local

    manifest, templates = _read_local(HERE / "contract")
    common = {"name": name, "manifest": manifest, "templates": templates, "state": "ready", "created_by": user}
    if runner == "docker":
        engine_or_skip()
        return ExecutorImage.objects.create(kind="docker", reference=built_images()["contract"], **common)
    bwrap_or_skip()
    return ExecutorImage.objects.create(
        kind="local",
        command=["/bin/sh", str(HERE / "contract" / "start.sh")],
        folder=str(HERE / "contract"),
        **common,
    )


def sdk_executor(runner: str, user) -> ExecutorImage:
    """The executor written with YMIR's SDK, unmodified; locally it runs on this environment's Python."""
    from models_app.executors import _read_local

    manifest, templates = _read_local(HERE / "sdk")
    common = {"name": "sdk", "manifest": manifest, "templates": templates, "state": "ready", "created_by": user}
    if runner == "docker":
        engine_or_skip()
        return ExecutorImage.objects.create(kind="docker", reference=built_images()["sdk"], **common)
    bwrap_or_skip()
    binds = sorted({sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent)})
    return ExecutorImage.objects.create(
        kind="local",
        command=[sys.executable, str(HERE / "sdk" / "run.py")],
        folder=str(HERE / "sdk"),
        binds=binds,
        **common,
    )


def small_datasets(user, tmp_path: Path):
    """A project with two small annotated datasets (classes a, b)."""
    for name in ("a", "b"):
        classes.class_create(user=user, name=name)
    project = ProjectFactory(owner=user)

    def dataset(name: str, count: int, shade: int):
        files = {}
        for i in range(count):
            files[f"images/{name}{i}.jpg"] = jpeg(colour=(shade + 50 * i, 10, 10))
            files[f"gt/{name}{i}.xml"] = voc(f"{name}{i}.jpg", [("a", 1, 1, 9, 9), ("b", 2, 3, 20, 30)])
        return import_now(user, project, name=name, upload=make_zip(tmp_path / f"{name}.zip", files))

    return project, dataset("train", 4, 10), dataset("val", 2, 25)
