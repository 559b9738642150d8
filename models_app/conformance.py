"""The executor conformance check: run an image through a tiny training, mining and inference job on a few
synthetic images and report, point by point, what it does and does not honour in the contract.

The check is a task of its own (kind ``conformance``). It never waits inside a broker message: ``advance``
looks at its sub-tasks, submits the next ones, and is called again a few seconds later (``executor.conformance``)
until every sub-task has ended; the report is then kept on the task and on the image.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.errors import Conflict, Invalid
from core.models import User
from datasets.models import Asset, DatasetVersion
from models_app import contract, jobs, taskdir
from models_app.models import ExecutorImage, ModelVersion, Task
from models_app.services import task_create, task_finish
from projects.models import Project

State = Task.State
PROJECT_NAME = "Executor conformance"
DATA = {"conformance-train": (8, 0), "conformance-val": (4, 8)}  # name: (images, first index)
SEED = 7
EPOCH_KEYS = ("epochs", "epoch", "max_epochs", "num_epochs")


def conformance_start(*, user: User, image: ExecutorImage, gpu_count: int = 0) -> Task:
    if not user.is_platform_admin:
        raise Invalid(_("Only administrators run conformance checks."), code="forbidden")
    if image.state != ExecutorImage.State.READY or not image.task_types:
        raise Invalid(_("This executor is not ready."), code="image_not_ready")
    if gpu_count < 0:
        raise Invalid(_("Invalid GPU count."), code="invalid_gpu_count")
    with transaction.atomic():
        image = ExecutorImage.objects.select_for_update().get(pk=image.pk)
        running = Task.objects.filter(kind=Task.Kind.CONFORMANCE, image=image).exclude(state__in=Task.FINAL_STATES)
        if running.exists():
            raise Conflict(_("A conformance check of this executor is already running."), code="check_running")
        check = task_create(
            user=user,
            kind=Task.Kind.CONFORMANCE,
            parameters={"steps": {}, "gpu_count": gpu_count, "chain": uuid.uuid4().hex},
        )
        Task.objects.filter(pk=check.pk).update(image=image, state=State.RUNNING, started_at=timezone.now())
        image.conformance = {"task": check.pk, "state": "running", "points": []}
        image.save(update_fields=["conformance"])
        transaction.on_commit(functools.partial(schedule, check.pk, check.parameters["chain"], 0))
    check.refresh_from_db()
    return check


def schedule(check_id: int, chain: str, countdown: float) -> None:
    from models_app.tasks import conformance_step

    conformance_step.apply_async((check_id, chain), countdown=countdown)


def restart_lost(stale_seconds: int) -> list[int]:
    """Checks whose chain of steps was lost (a worker died holding it) get a new chain."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    restarted = []
    for check in Task.objects.filter(kind=Task.Kind.CONFORMANCE, state=State.RUNNING, heartbeat_at__lt=cutoff):
        chain = uuid.uuid4().hex
        Task.objects.filter(pk=check.pk).update(parameters={**check.parameters, "chain": chain})
        transaction.on_commit(functools.partial(schedule, check.pk, chain, 0))
        restarted.append(check.pk)
    return restarted


# --- the steps ----------------------------------------------------------------------------------------


def _project(user: User) -> Project:
    project = Project.objects.filter(owner=user, name__iexact=PROJECT_NAME).first()
    if project is None:
        project = Project.objects.create(
            owner=user, name=PROJECT_NAME, description=_("Synthetic images used by executor conformance checks.")
        )
    return project


def _data(user: User, project: Project) -> dict[str, DatasetVersion] | None:
    """The check's small synthetic datasets; None while they are being imported."""
    from datasets.services import demo_classes_ensure, demo_import_start

    found = {}
    for name, (count, start) in DATA.items():
        version = DatasetVersion.objects.filter(group__project=project, group__name=name, number=1).first()
        if version is None:
            demo_classes_ensure(user)
            version = demo_import_start(user=user, project=project, name=name, count=count, seed=SEED, start=start)
        if version.state == DatasetVersion.State.ERROR:
            raise Invalid(_("The check's sample images could not be imported."), code="sample_import_failed")
        found[name] = version
    if any(v.state != DatasetVersion.State.READY for v in found.values()):
        return None
    return found


def _training_config(image: ExecutorImage) -> dict[str, Any]:
    template = image.templates.get("training", {})
    return {key: 1 for key in EPOCH_KEYS if isinstance(template.get(key), int) and not isinstance(template[key], bool)}


def advance(check_id: int, chain: str) -> bool:
    """One step of a check; True while it goes on (call again later)."""
    with transaction.atomic():
        check = Task.objects.select_for_update().filter(pk=check_id).first()
        if check is None or check.parameters.get("chain") != chain:
            return False  # gone, or superseded by a newer chain of steps
        steps: dict[str, int] = dict(check.parameters.get("steps", {}))
        subtasks = {kind: Task.objects.get(pk=pk) for kind, pk in steps.items()}
        if check.is_final:  # cancelled: its runs stop too
            for sub in subtasks.values():
                jobs.cancel(sub)
            return False
        Task.objects.filter(pk=check.pk).update(heartbeat_at=timezone.now())
        image = check.image
        assert image is not None
        try:
            data = _data(check.user, _project(check.user))
        except Invalid as exc:
            task_finish(check.pk, state=State.ERROR, error_code=exc.code, error_message=exc.message)
            return False
        if data is None:
            return True
        common: dict[str, Any] = {
            "user": check.user,
            "project": _project(check.user),
            "image": image,
            "class_names": _classes(data["conformance-train"]),
            "gpu_count": int(check.parameters.get("gpu_count", 0)),
            "extra": {"conformance": check.pk},
        }
        if "training" in image.task_types and "training" not in steps:
            steps["training"] = jobs.job_submit(
                task_type="training",
                train=data["conformance-train"],
                val=data["conformance-val"],
                model_name=f"conformance-{image.name}",
                user_config=_training_config(image),
                **common,
            ).pk
        training = subtasks.get("training")
        stage = _model_stage(training)
        if stage is not None:
            runs: list[tuple[str, dict[str, Any]]] = [("mining", {"top_k": 2, "also_infer": True}), ("infer", {})]
            for kind, options in runs:
                if kind in image.task_types and kind not in steps:
                    candidates = data["conformance-val"]
                    steps[kind] = jobs.job_submit(
                        task_type=kind, candidates=candidates, model_stage=stage, **options, **common
                    ).pk
        check.parameters["steps"] = steps
        Task.objects.filter(pk=check.pk).update(parameters=check.parameters)
        subtasks = {kind: Task.objects.get(pk=pk) for kind, pk in steps.items()}
        waiting_for_model = stage is None and ("training" not in subtasks or not subtasks["training"].is_final)
        if waiting_for_model or any(not sub.is_final for sub in subtasks.values()):
            done = sum(1 for sub in subtasks.values() if sub.is_final)
            Task.objects.filter(pk=check.pk).update(
                percent=min(0.95, 0.1 + 0.85 * done / max(1, len(image.task_types)))
            )
            return True
        points = report(image, subtasks, data)
        result = {"points": points, "steps": steps, "passed": all(p["ok"] is not False for p in points)}
        Task.objects.filter(pk=check.pk).update(result=result)
        task_finish(check.pk, state=State.DONE)
        image.conformance = {"task": check.pk, "state": "done", "at": timezone.now().isoformat(), **result}
        image.save(update_fields=["conformance"])
        return False


def _classes(version: DatasetVersion) -> list[str]:
    return sorted((version.class_counts or {}).get("gt", {}))


def _model_stage(training: Task | None):  # type: ignore[no-untyped-def]
    if training is None or training.state != State.DONE:
        return None
    version = ModelVersion.objects.filter(pk=training.result.get("landed", {}).get("model_version")).first()
    if version is None:
        return None
    return version.stages.filter(name=version.recommended_stage).first() or version.stages.first()


# --- the report -------------------------------------------------------------------------------------------


def _point(key: str, ok: bool | None, detail: str = "") -> dict[str, Any]:
    """ok: True honoured, False not honoured, None a warning (or not checked)."""
    return {"key": key, "ok": ok, "detail": detail}


TITLES = {
    "manifest": gettext_lazy("Manifest and templates are read without running the image"),
    "run": gettext_lazy("%(kind)s runs to the end"),
    "monitor": gettext_lazy("%(kind)s writes progress to /out/monitor.txt and reaches 100%%"),
    "log": gettext_lazy("%(kind)s writes a log"),
    "result": gettext_lazy("result.yaml uses protocol 1.1 (model_stages)"),
    "stages": gettext_lazy("Model stages list files that exist under /out/models"),
    "map": gettext_lazy("Each stage reports an mAP"),
    "tensorboard": gettext_lazy("Writes TensorBoard event files to /out/tensorboard"),
    "all": gettext_lazy("result.tsv scores every candidate image"),
    "infer_all": gettext_lazy("%(kind)s: infer-result.json covers every image"),
    "classes": gettext_lazy("%(kind)s: predicted classes are the task's classes"),
    "bounds": gettext_lazy("%(kind)s: boxes lie inside their image"),
    "scores": gettext_lazy("%(kind)s: scores lie between 0 and 1"),
}
KIND_NAMES = {
    "training": gettext_lazy("Training"),
    "mining": gettext_lazy("Mining"),
    "infer": gettext_lazy("Inference"),
}


def point_title(key: str) -> str:
    """The point's title in the reader's language (reports keep keys, not words)."""
    kind, _sep, name = key.rpartition(".")
    template = TITLES.get(name)
    if template is None:
        return key
    return str(template) % {"kind": KIND_NAMES.get(kind, kind)} if "%(kind)s" in str(template) else str(template)


def report(image: ExecutorImage, subtasks: dict[str, Task], data: dict[str, DatasetVersion]) -> list[dict[str, Any]]:
    points = [_point("manifest", bool(image.templates), ", ".join(image.task_types))]
    for kind in ExecutorImage.TASK_TYPES:
        if kind not in image.task_types:
            continue
        sub = subtasks.get(kind)
        if sub is None:
            points.append(_point(f"{kind}.run", False, "not run: no trained model to run with"))
            continue
        points.extend(_run_points(kind, sub, data))
    return points


def _run_points(kind: str, sub: Task, data: dict[str, DatasetVersion]) -> list[dict[str, Any]]:
    out = taskdir.task_dir(sub.pk) / "out"
    seconds = (sub.finished_at - sub.started_at).total_seconds() if sub.finished_at and sub.started_at else None
    detail = f"{seconds:.1f} s" if seconds is not None and sub.state == State.DONE else ""
    if sub.state != State.DONE:
        detail = f"{sub.error_code}: {sub.error_message}"[:500]
    points = [_point(f"{kind}.run", sub.state == State.DONE, detail)]
    monitor = contract.read_monitor(out / "monitor.txt") if (out / "monitor.txt").exists() else None
    points.append(
        _point(
            f"{kind}.monitor",
            monitor is not None and monitor.percent >= 1.0,
            f"{monitor.percent:.0%}" if monitor else "no readable monitor.txt",
        )
    )
    points.append(_point(f"{kind}.log", bool(sub.log_tail.strip()) or None))
    if sub.state != State.DONE:
        return points
    if kind == "training":
        points.extend(_training_points(sub, out))
    candidates = data["conformance-val"].asset_count
    if kind == "mining":
        scored = sub.result.get("mining", {}).get("count", 0)
        points.append(
            _point(
                "mining.all",
                scored == candidates,
                f"{scored} / {candidates}",
            )
        )
    if sub.parameters.get("run_infer"):
        points.extend(_infer_points(kind, sub, candidates))
    return points


def _training_points(sub: Task, out: Path) -> list[dict[str, Any]]:
    training = sub.result.get("training", {})
    maps = [s.get("mAP") for s in training.get("stages", {}).values()]
    board = out / "tensorboard"
    events = [p for p in board.rglob("*") if p.is_file()] if board.is_dir() else []
    protocol = training.get("protocol", "")
    return [
        _point(
            "training.result",
            True if protocol == "1.1" else None,
            f"protocol {protocol or '?'}",
        ),
        _point(
            "training.stages",
            bool(training.get("stages")),
            ", ".join(sorted(training.get("stages", {}))),
        ),
        _point(
            "training.map",
            bool(maps) and all(isinstance(m, float) and math.isfinite(m) for m in maps),
        ),
        _point(
            "training.tensorboard",
            True if events else None,
            f"{len(events)} files",
        ),
    ]


def _infer_points(kind: str, sub: Task, candidates: int) -> list[dict[str, Any]]:
    path = taskdir.task_dir(sub.pk) / "predictions.json"
    predictions: dict[str, list[dict[str, Any]]] = json.loads(path.read_text()) if path.exists() else {}
    rows = Asset.objects.filter(sha1__in=list(predictions)).values_list("sha1", "width", "height")
    sizes = {sha1: (w, h) for sha1, w, h in rows}
    classes = set(sub.parameters.get("class_names", []))
    boxes = [(sha1, box) for sha1, items in predictions.items() for box in items]
    foreign = sorted({box["class_name"] for _sha1, box in boxes} - classes)
    outside = sum(
        1
        for sha1, box in boxes
        if sha1 in sizes
        and (box["x1"] < 0 or box["y1"] < 0 or box["x2"] > sizes[sha1][0] + 0.5 or box["y2"] > sizes[sha1][1] + 0.5)
    )
    scores_ok = all(0.0 <= box["score"] <= 1.0 for _sha1, box in boxes)
    return [
        _point(
            f"{kind}.infer_all",
            len(predictions) == candidates,
            f"{len(predictions)} / {candidates}",
        ),
        _point(
            f"{kind}.classes",
            not foreign,
            ", ".join(foreign[:10]),
        ),
        _point(f"{kind}.bounds", outside == 0, f"{outside} outside"),
        _point(f"{kind}.scores", scores_ok),
    ]
