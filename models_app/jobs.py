"""Executor jobs: submit, launch (once, idempotently), follow, collect, cancel, and recover.

A job never lives inside one broker message. ``launch`` is a short task that takes GPUs (leases), writes
the task folder, starts the run and records it; ``follow`` polls it every few seconds on the host that
started it (its own queue) and re-schedules itself; the reconciler (beat, and each worker at start) picks
up runs whose follower was lost. The task row is the truth: updates after a final state are ignored.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Invalid
from core.models import User
from datasets.models import DatasetGroup, DatasetVersion
from models_app import contract, landing, taskdir
from models_app.errors import error_meaning
from models_app.models import ExecutorImage, GpuLease, ModelStage, Task, WorkerHost
from models_app.runners import Poll, RunnerError, RunSpec, runner_for
from models_app.services import task_finish
from projects.models import Project

logger = logging.getLogger(__name__)
State = Task.State
KIND_OF = {"training": Task.Kind.TRAINING, "mining": Task.Kind.MINING, "infer": Task.Kind.INFERENCE}
GPU_QUEUE_SUFFIX = ".gpu"


# --- where things run ---------------------------------------------------------------------------------


def host_name() -> str:
    return settings.YMIR_HOST_NAME or socket.gethostname()


def host_queue(host: str) -> str:
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}.host.{host}"


def gpu_queue() -> str:
    return settings.CELERY_TASK_DEFAULT_QUEUE + GPU_QUEUE_SUFFIX


def worker_queues() -> list[str]:
    """The queues this worker consumes: everyone's, its host's, and the GPU queue when it declares GPUs."""
    queues = [settings.CELERY_TASK_DEFAULT_QUEUE, host_queue(host_name())]
    if settings.YMIR_WORKER_GPUS:
        queues.append(gpu_queue())
    return queues


def host_register() -> WorkerHost:
    host, _created = WorkerHost.objects.update_or_create(
        name=host_name(), defaults={"gpus": list(settings.YMIR_WORKER_GPUS), "last_seen": timezone.now()}
    )
    return host


# --- submit ---------------------------------------------------------------------------------------------


def job_submit(
    *,
    user: User,
    image: ExecutorImage,
    task_type: str,
    class_names: list[str],
    project: Project | None = None,
    train: DatasetVersion | None = None,
    val: DatasetVersion | None = None,
    candidates: DatasetVersion | None = None,
    models_from: Path | None = None,
    user_config: dict[str, Any] | None = None,
    gpu_count: int = 0,
    also_infer: bool = False,
    model_stage: ModelStage | None = None,
    model_name: str = "",
    top_k: int | None = None,
    output_name: str = "",
    extra: dict[str, Any] | None = None,
    launch: bool = True,
) -> Task:
    """Validate and record a training, mining or inference run; it is enqueued after the commit (unless not
    ``launch``: the caller completes it without a run).

    With a project, what the run produces lands there: training as a version of the model group
    ``model_name``, mining as a new dataset ``output_name`` of the ``top_k`` best-scored images (with the
    predictions as a prediction set when ``also_infer``), inference as a prediction set on ``candidates``.
    """
    if image.state != ExecutorImage.State.READY:
        raise Invalid(_("This executor is not ready."), code="image_not_ready")
    if task_type not in image.templates:
        raise Invalid(_("This executor cannot do %(type)s.") % {"type": task_type}, code="unsupported_task_type")
    if not class_names:
        raise Invalid(_("Choose at least one class."), code="no_classes")
    if gpu_count < 0 or gpu_count > settings.YMIR_MAX_GPUS_PER_TASK:
        raise Invalid(_("Invalid GPU count."), code="invalid_gpu_count")
    if task_type == "training" and (train is None or val is None):
        raise Invalid(_("Training needs a training and a validation dataset."), code="missing_dataset")
    if task_type != "training" and candidates is None:
        raise Invalid(_("Mining and inference need a dataset to run on."), code="missing_dataset")
    if model_stage is not None:
        models_from = landing.model_dir(model_stage.version_id)
    if task_type != "training" and models_from is None:
        raise Invalid(_("Mining and inference need a model."), code="missing_model")
    if project is not None and project.owner_id != user.pk:
        raise Invalid(_("You can only run tasks in your own projects."), code="not_your_project")
    for version in (train, val, candidates):
        if version is not None and version.state != DatasetVersion.State.READY:
            raise Invalid(_("Datasets must be ready."), code="dataset_not_ready")
        foreign = version is not None and project is not None and version.group.project_id != project.pk
        if foreign and version is not None and not version.is_public:
            raise Invalid(_("Datasets must belong to the project or be public."), code="invalid_dataset")
    if model_stage is not None and project is not None and model_stage.version.group.project_id != project.pk:
        raise Invalid(_("The model must belong to the project."), code="invalid_model")
    if top_k is not None and (task_type != "mining" or top_k < 1):
        raise Invalid(_("Top-k must be a positive number of images, for mining."), code="invalid_top_k")
    taken = DatasetGroup.objects.filter(project=project, name__iexact=output_name.strip())
    if output_name and project is not None and taken.exists():
        raise Invalid(_("This project already has a dataset with that name."), code="dataset_name_taken")
    user_config = dict(user_config or {})
    template = image.templates[task_type]
    for key, value in user_config.items():
        if key in contract.RESERVED_KEYS:
            raise Invalid(_("%(key)s is set by the platform and cannot be changed.") % {"key": key}, code="reserved")
        if key in template and template[key] is not None and not _same_type(template[key], value):
            raise Invalid(
                _("%(key)s must be of type %(type)s.") % {"key": key, "type": type(template[key]).__name__},
                code="invalid_config",
            )
    try:
        contract.parse_export_format(user_config.get("export_format", template.get("export_format")))
    except contract.ContractError as exc:
        raise Invalid(str(exc), code="invalid_config") from None
    parameters = {
        "task_type": task_type,
        "class_names": class_names,
        "train": train.pk if train else None,
        "val": val.pk if val else None,
        "candidates": candidates.pk if candidates else None,
        "models_from": str(models_from) if models_from else "",
        "user_config": user_config,
        "run_infer": bool(task_type == "infer" or also_infer),
        "model_stage": model_stage.pk if model_stage else None,
        "model_files": list(model_stage.files) if model_stage else None,
        "model_name": model_name.strip(),
        "top_k": top_k,
        "output_name": output_name.strip(),
        **(extra or {}),
    }
    with transaction.atomic():
        task = Task.objects.create(
            user=user,
            project=project,
            kind=KIND_OF[task_type],
            image=image,
            runner=image.kind,
            gpu_count=gpu_count,
            parameters=parameters,
            timeout_seconds=settings.YMIR_TASK_TIMEOUTS.get(task_type),
        )
        if launch:
            transaction.on_commit(lambda: enqueue_launch(task.pk))
    return task


def _same_type(default: object, value: object) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, type(default))


def enqueue_launch(task_id: int) -> None:
    from models_app.tasks import executor_launch

    task = Task.objects.get(pk=task_id)
    Task.objects.filter(pk=task_id, state=State.PENDING).update(state=State.QUEUED, queued_at=timezone.now())
    executor_launch.apply_async((task_id,), queue=gpu_queue() if task.gpu_count else settings.CELERY_TASK_DEFAULT_QUEUE)


def queue_position(task: Task) -> int | None:
    """1-based place among GPU tasks waiting; None when not waiting."""
    if task.state != State.QUEUED or not task.gpu_count:
        return None
    ahead = Task.objects.filter(state=State.QUEUED, gpu_count__gt=0, run_ref="", created_at__lt=task.created_at)
    return ahead.count() + 1


# --- GPUs ---------------------------------------------------------------------------------------------


def gpus_acquire(task: Task, host: str, declared: list[str]) -> list[str] | None:
    """Lease ``task.gpu_count`` free GPUs of this host, or None when there are not enough (the task waits).
    An older waiting task that would fit goes first."""
    now = timezone.now()
    with transaction.atomic():
        GpuLease.objects.filter(host=host, expires_at__lt=now).delete()
        held = set(GpuLease.objects.filter(host=host).values_list("gpu", flat=True))
        mine = list(GpuLease.objects.filter(task=task).values_list("gpu", flat=True))
        if len(mine) >= task.gpu_count:
            return mine[: task.gpu_count]
        free = [g for g in declared if g not in held]
        if len(free) < task.gpu_count:
            return None
        older = Task.objects.filter(
            state=State.QUEUED, run_ref="", gpu_count__gt=0, gpu_count__lte=len(free), created_at__lt=task.created_at
        )
        if older.exists():
            return None
        chosen = free[: task.gpu_count]
        expires = now + timedelta(seconds=settings.YMIR_GPU_LEASE_SECONDS)
        try:
            with transaction.atomic():
                GpuLease.objects.bulk_create(
                    [GpuLease(host=host, gpu=g, task=task, expires_at=expires) for g in chosen]
                )
        except IntegrityError:  # another worker of this host took one first
            return None
    return chosen


def gpus_renew(task: Task) -> None:
    expires = timezone.now() + timedelta(seconds=settings.YMIR_GPU_LEASE_SECONDS)
    GpuLease.objects.filter(task=task).update(expires_at=expires)


def gpus_release(task_id: int) -> None:
    GpuLease.objects.filter(task_id=task_id).delete()


# --- launch ---------------------------------------------------------------------------------------------


def spec_for(task: Task) -> RunSpec:
    image = task.image
    assert image is not None
    root = taskdir.task_dir(task.pk)
    shm = str(task.config.get("shm_size") or "")
    return RunSpec(
        task_id=task.pk,
        in_dir=root / "in",
        out_dir=root / "out",
        reference=image.reference,
        command=list(image.command),
        folder=image.folder,
        binds=list(image.binds),
        gpu_ids=[g for g in task.gpu_ids.split(",") if g],
        shm_size=shm,
        network=image.wants_network,
    )


def _prepare(task: Task, gpu_ids: list[str]) -> dict[str, Any]:
    """Write the task folder once (``in.partial`` renamed to ``in`` when complete); the config written."""
    root = taskdir.task_dir(task.pk)
    final = root / "in"
    config_file = final / "config.yaml"
    if config_file.exists():
        return dict(contract.load_yaml(config_file.read_text(), "config.yaml"))
    partial = root / "in.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    (root / "out" / "models").mkdir(exist_ok=True)
    (root / "out" / "tensorboard").mkdir(exist_ok=True)
    params = task.parameters
    task_type = params["task_type"]
    image = task.image
    assert image is not None
    template = dict(image.templates.get(task_type, {}))
    user_config = params.get("user_config", {})
    export_format = str(user_config.get("export_format", template.get("export_format", "")) or "")
    writer = taskdir.InputWriter(partial, params["class_names"], export_format)
    training = task_type == "training"
    run_mining = task_type == "mining" and not params.get("skip_scoring")
    run_infer = bool(params.get("run_infer"))
    model_paths: list[str] = []
    if params.get("models_from"):
        model_paths = taskdir.link_models(Path(params["models_from"]), partial / "models", params.get("model_files"))
    (partial / "models").mkdir(exist_ok=True)
    (partial / "assets").mkdir(exist_ok=True)
    if training:
        from models_app.training import overlap_skip

        skip_train, skip_val = overlap_skip(params)
        writer.index("train-index.tsv", DatasetVersion.objects.get(pk=params["train"]), annotated=True, skip=skip_train)
        writer.index("val-index.tsv", DatasetVersion.objects.get(pk=params["val"]), annotated=True, skip=skip_val)
    else:
        writer.index("candidate-index.tsv", DatasetVersion.objects.get(pk=params["candidates"]), annotated=False)
    writer.finish()
    reserved: dict[str, Any] = {
        "task_id": f"t{task.pk}",
        "class_names": list(params["class_names"]),
        "gpu_id": ",".join(str(i) for i in range(len(gpu_ids))),  # the run sees its GPUs as 0..n-1
        "gpu_count": len(gpu_ids),
        "object_type": 2,
    }
    if training:
        reserved["pretrained_model_params"] = model_paths
    else:
        reserved.update({"model_params_path": model_paths, "run_mining": run_mining, "run_infer": run_infer})
    config = contract.config_yaml(template, user_config, reserved)
    taskdir.write_yaml(
        partial / "env.yaml",
        contract.env_yaml(task_id=f"t{task.pk}", run_training=training, run_mining=run_mining, run_infer=run_infer),
    )
    taskdir.write_yaml(partial / "config.yaml", config)
    (root / "known.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in writer.known.items()))
    if task.runner == "docker":
        _open_out(root / "out")
    partial.rename(final)
    return config


def _open_out(out: Path) -> None:
    """/out must be writable by the container's (non-root) uid. (The local runner maps its uid onto ours.)"""
    import os

    from models_app.runners import executor_uid

    if os.getuid() == 0:
        uid, gid = executor_uid()
        for path in [out, *out.rglob("*")]:
            os.chown(path, uid, gid)


def launch(task_id: int) -> str:
    """Start the run of a task: ``launched``, ``waiting`` (for GPUs), ``final`` (nothing to do) or ``error``.

    Idempotent: a redelivered message finds the run recorded (or the container labelled with the task)
    and adopts it. A launch that kills its worker every time ends in error after a few deliveries.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update(of=("self",)).select_related("image").filter(pk=task_id).first()
        if task is None or task.is_final:
            return "final"
        if task.run_ref:
            return "launched"
        task.deliveries += 1
        task.save(update_fields=["deliveries"])
    if task.deliveries > settings.YMIR_MAX_DELIVERIES:
        _fail(
            task, "launch_crashed", _("Starting this task stopped its worker %(n)s times.") % {"n": task.deliveries - 1}
        )
        return "error"
    host = host_name()
    gpu_ids: list[str] = []
    if task.gpu_count:
        acquired = gpus_acquire(task, host, list(settings.YMIR_WORKER_GPUS))
        if acquired is None:
            Task.objects.filter(pk=task.pk, state__in=(State.PENDING, State.QUEUED)).update(
                state=State.QUEUED, deliveries=task.deliveries - 1
            )
            return "waiting"
        gpu_ids = acquired
    task.gpu_ids = ",".join(gpu_ids)
    try:
        config = _prepare(task, gpu_ids)
        task.config = config
        spec = spec_for(task)
        runner = runner_for(task.runner)
        run_ref = runner.launch(spec)
    except (contract.ContractError, RunnerError, OSError, ValueError) as exc:
        _fail(task, "launch_failed", str(exc))
        return "error"
    now = timezone.now()
    updated = (
        Task.objects.filter(pk=task.pk)
        .exclude(state__in=Task.FINAL_STATES)
        .update(
            state=State.RUNNING,
            run_ref=run_ref,
            host=host,
            gpu_ids=task.gpu_ids,
            config=config,
            started_at=now,
            heartbeat_at=now,
            deliveries=0,
        )
    )
    if not updated:  # cancelled while starting
        runner.stop(run_ref)
        gpus_release(task.pk)
        return "final"
    return "launched"


def _fail(task: Task, code: str, message: str, log_tail: str = "") -> None:
    with transaction.atomic():  # the final state and the freed GPUs are seen together
        if log_tail:
            Task.objects.filter(pk=task.pk).update(log_tail=log_tail[-8192:])
        gpus_release(task.pk)
        task_finish(task.pk, state=State.ERROR, error_code=code, error_message=message)


# --- follow and collect -----------------------------------------------------------------------------


def follow(task_id: int) -> bool:
    """Poll one run once; True while it goes on. Progress only moves forward; a final state is kept."""
    task = Task.objects.select_related("image").filter(pk=task_id).first()
    if task is None or task.is_final or not task.run_ref:
        return False
    WorkerHost.objects.filter(name=task.host).update(last_seen=timezone.now())
    spec = spec_for(task)
    try:
        runner = runner_for(task.runner)
        poll = runner.poll(task.run_ref, spec)
    except RunnerError as exc:
        logger.warning("cannot poll task %s: %s", task_id, exc)
        return True
    if task.cancel_requested:
        runner.stop(task.run_ref)
        with transaction.atomic():
            Task.objects.filter(pk=task.pk).update(log_tail=poll.log_tail[-8192:])
            gpus_release(task.pk)
            task_finish(
                task.pk, state=State.TERMINATED, error_code="cancelled", error_message=_("Cancelled by the user.")
            )
        return False
    monitor = contract.read_monitor(spec.out_dir / "monitor.txt")
    if poll.state == "running":
        if (
            task.timeout_seconds
            and task.started_at
            and timezone.now() - task.started_at > timedelta(seconds=task.timeout_seconds)
        ):
            runner.stop(task.run_ref)
            _fail(
                task,
                "timeout",
                _("The run took longer than %(s)s seconds.") % {"s": task.timeout_seconds},
                poll.log_tail,
            )
            return False
        _progress(task, monitor, poll)
        gpus_renew(task)
        return True
    if poll.state == "gone":
        _fail(task, "run_lost", _("The executor's run disappeared (its container or process is gone)."), poll.log_tail)
        return False
    runner.finish(task.run_ref, spec)
    _collect(task, spec, poll, monitor)
    gpus_release(task.pk)
    return False


def _progress(task: Task, monitor: contract.Monitor | None, poll: Poll) -> None:
    updates: dict[str, Any] = {"heartbeat_at": timezone.now(), "log_tail": poll.log_tail[-8192:]}
    qs = Task.objects.filter(pk=task.pk, state=State.RUNNING)
    if monitor is not None and monitor.timestamp >= task.monitor_at and monitor.percent >= task.percent:
        updates["percent"] = min(monitor.percent, 0.99)
        updates["monitor_at"] = monitor.timestamp
    qs.update(**updates)


def _known(task: Task) -> dict[str, str]:
    path = taskdir.task_dir(task.pk) / "known.tsv"
    known = {}
    for line in path.read_text().splitlines():
        key, _sep, sha1 = line.partition("\t")
        known[key] = sha1
    return known


def _collect(task: Task, spec: RunSpec, poll: Poll, monitor: contract.Monitor | None) -> None:
    Task.objects.filter(pk=task.pk).update(log_tail=poll.log_tail[-8192:])
    if monitor is not None and monitor.state == 4:
        code = monitor.error_code or "executor_error"
        _fail(task, code, monitor.message or error_meaning(code), poll.log_tail)
        return
    if poll.exit_code != 0:
        _fail(
            task,
            "executor_exit",
            _("The executor exited with status %(code)s.") % {"code": poll.exit_code},
            poll.log_tail,
        )
        return
    params = task.parameters
    result: dict[str, Any] = {}
    scores = boxes = None
    try:
        if params["task_type"] == "training":
            result["training"] = contract.read_training_result(spec.out_dir)
        if params["task_type"] == "mining" and params.get("skip_scoring"):
            scores = landing.all_candidates(int(params["candidates"]))
        elif params["task_type"] == "mining":
            scores = contract.read_mining_result(spec.out_dir, _known(task))
            result["mining"] = {"count": len(scores), "top": [[s, v] for s, v in scores[:1000]]}
        if params.get("run_infer"):
            boxes = contract.read_infer_result(spec.out_dir, _known(task))
            result["infer"] = {"images": len(boxes), "boxes": sum(len(b) for b in boxes.values())}
            (taskdir.task_dir(task.pk) / "predictions.json").write_text(json.dumps(boxes))
    except contract.ContractError as exc:
        _fail(task, "bad_output", str(exc), poll.log_tail)
        return
    try:
        with transaction.atomic():
            if Task.objects.select_for_update().filter(pk=task.pk, state=State.RUNNING).exists():
                result["landed"] = landing.land(task, result, spec.out_dir, scores, boxes)
                Task.objects.filter(pk=task.pk).update(result=result)
                gpus_release(task.pk)
                task_finish(task.pk, state=State.DONE)
    except (DatabaseError, OSError) as exc:
        logger.exception("landing the outputs of task %s failed", task.pk)
        _fail(task, "landing_failed", _("The run's outputs could not be stored: %(e)s") % {"e": exc}, poll.log_tail)


# --- cancel and recovery -------------------------------------------------------------------------------


def cancel(task: Task) -> bool:
    """Stop a task: one not yet started ends at once; a running one is stopped by its host's worker."""
    if task.is_final:
        return False
    if task.kind == Task.Kind.LABELLING:  # ends at once; its Label Studio project is archived
        from datasets.labelling import labelling_cancel
        from datasets.models import Labelling

        labelling = Labelling.objects.select_related("task").filter(task=task).first()
        return labelling is not None and labelling_cancel(labelling)
    if not task.run_ref:
        with transaction.atomic():
            gpus_release(task.pk)
            done = task_finish(
                task.pk, state=State.TERMINATED, error_code="cancelled", error_message=_("Cancelled by the user.")
            )
        if done or task.image_id is None:
            return done
    Task.objects.filter(pk=task.pk).update(cancel_requested=True)
    if task.image_id is not None:
        from models_app.tasks import executor_follow

        executor_follow.apply_async((task.pk,), queue=host_queue(task.host))
    return True


def reconcile_host(host: str) -> list[int]:
    """Follow every run of this host once (after a worker restart, or as a safety net). Ids still running."""
    WorkerHost.objects.filter(name=host).update(last_seen=timezone.now())
    running = []
    for task_id in Task.objects.filter(host=host, state=State.RUNNING).exclude(run_ref="").values_list("id", flat=True):
        if follow(task_id):
            running.append(task_id)
    return running


def reconcile_lost_hosts(stale_seconds: int) -> list[int]:
    """Runs on hosts not seen for ``stale_seconds`` end in error; their GPU leases go."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    lost_hosts = list(WorkerHost.objects.filter(last_seen__lt=cutoff).values_list("name", flat=True))
    lost = list(
        Task.objects.filter(host__in=lost_hosts, state=State.RUNNING).exclude(run_ref="").values_list("id", flat=True)
    )
    for task_id in lost:
        task_finish(
            task_id,
            state=State.ERROR,
            error_code="host_lost",
            error_message=_("The worker host running this task has not been seen for %(s)s seconds.")
            % {"s": stale_seconds},
        )
        gpus_release(task_id)
    return lost


def job_retry(*, user: User, task: Task) -> Task:
    """Run an ended executor task again with the same inputs and settings (a new task)."""
    if task.image is None or not task.is_final or "task_type" not in task.parameters:
        raise Invalid(_("Only an ended training, mining or inference task can be retried."), code="not_retryable")
    params = task.parameters
    versions = {k: DatasetVersion.objects.filter(pk=params.get(k)).first() for k in ("train", "val", "candidates")}
    return job_submit(
        user=user,
        image=task.image,
        task_type=params["task_type"],
        class_names=list(params["class_names"]),
        project=task.project,
        train=versions["train"],
        val=versions["val"],
        candidates=versions["candidates"],
        models_from=Path(params["models_from"]) if params.get("models_from") else None,
        user_config=dict(params.get("user_config", {})),
        gpu_count=task.gpu_count,
        also_infer=bool(params.get("run_infer")) and params["task_type"] == "mining",
        model_stage=ModelStage.objects.filter(pk=params.get("model_stage")).first(),
        model_name=str(params.get("model_name") or ""),
        top_k=params.get("top_k"),
        output_name="",  # the first run's name may be taken by what it produced; a fresh default then
    )
