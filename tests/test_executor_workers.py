"""Jobs through real Celery workers: recovery after a killed worker, and a GPU queue that waits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from django.conf import settings

from models_app import jobs
from models_app.models import GpuLease, Task
from models_app.runners import EXIT_FILE
from models_app.taskdir import task_dir
from tests.conftest import start_worker, worker_env
from tests.executors_util import contract_executor, small_datasets, until

FAST = {"YMIR_FOLLOW_SECONDS": "0.3", "YMIR_GPU_WAIT_SECONDS": "0.3"}


@pytest.fixture
def setup(transactional_db, trainer, workspace, tmp_path):
    from ymir.celery import queues_purge

    project, train, val = small_datasets(trainer, tmp_path)
    image = contract_executor("local", trainer)
    queues_purge([settings.CELERY_TASK_DEFAULT_QUEUE, jobs.gpu_queue(), jobs.host_queue("h1"), jobs.host_queue("h2")])
    processes = []

    def worker(host: str, gpus: str = "", log: str = "worker"):
        env = worker_env(workspace, YMIR_HOST_NAME=host, YMIR_WORKER_GPUS=gpus, **FAST)
        queues = [settings.CELERY_TASK_DEFAULT_QUEUE, jobs.host_queue(host)]
        if gpus:
            queues.append(jobs.gpu_queue())
        process = start_worker(",".join(queues), env, tmp_path / f"{log}.log", name=f"{log}-{host}")
        processes.append(process)
        return process

    def submit(gpu_count: int = 0) -> Task:
        return jobs.job_submit(
            user=trainer,
            project=project,
            image=image,
            task_type="training",
            class_names=["a", "b"],
            train=train,
            val=val,
            user_config={"mode": "hang"},
            gpu_count=gpu_count,
        )

    yield {"worker": worker, "submit": submit}
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def _state(task: Task) -> str:
    task.refresh_from_db()
    return task.state


def _release(task: Task) -> None:
    (task_dir(task.pk) / "out" / "release").write_text("go")


@pytest.mark.parametrize("run_survives", [True, False])
def test_a_killed_worker_leaves_no_task_stuck_in_running(setup, run_survives):
    first = setup["worker"]("h1", log="first")
    task = setup["submit"]()
    until(
        lambda: _state(task) == "running" and (task_dir(task.pk) / "out" / "monitor.txt").exists(),
        what="the run to start",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    if run_survives:
        _release(task)
        until(lambda: (task_dir(task.pk) / EXIT_FILE).exists(), what="the run to finish without its worker")
    else:
        os.killpg(int(task.run_ref.split(":")[0]), signal.SIGKILL)
    assert _state(task) == "running"  # nobody has looked yet
    setup["worker"]("h1", log="second")
    until(lambda: _state(task) in Task.FINAL_STATES, timeout=90, what="the restarted worker to reconcile")
    if run_survives:
        assert task.state == "done", (task.error_code, task.error_message)
        assert task.result["training"]["best_stage"] == "best"
    else:
        assert task.state == "error" and task.error_code == "run_lost"


def test_gpu_tasks_wait_for_a_free_gpu(setup):
    setup["worker"]("h1", gpus="0")
    setup["worker"]("h2", gpus="0")
    tasks = [setup["submit"](gpu_count=1) for _ in range(3)]
    until(lambda: [_state(t) for t in tasks].count("running") == 2, timeout=90, what="two GPU tasks to run")
    running = [t for t in tasks if t.state == "running"]
    waiting = [t for t in tasks if t.state != "running"]
    assert len(waiting) == 1 and waiting[0].state == "queued"
    assert jobs.queue_position(waiting[0]) == 1
    assert sorted(GpuLease.objects.values_list("host", flat=True)) == ["h1", "h2"]
    assert sorted(t.host for t in running) == ["h1", "h2"]
    assert [t.config["gpu_id"] for t in running] == ["0", "0"]
    _release(running[0])
    until(lambda: _state(waiting[0]) == "running", timeout=90, what="the waiting task to get the freed GPU")
    assert waiting[0].host == running[0].host
    for task in tasks:
        _release(task)
    until(lambda: all(_state(t) == "done" for t in tasks), timeout=90, what="all three to finish")
    # each landed model's stages are then inferred for the platform's evaluation, on GPUs too
    follow_ups = Task.objects.exclude(pk__in=[t.pk for t in tasks])
    assert follow_ups.filter(kind=Task.Kind.INFERENCE, gpu_count=1).exists()
    until(lambda: not Task.objects.exclude(state__in=Task.FINAL_STATES).exists(), timeout=120, what="the follow-ups")
    assert not GpuLease.objects.exists()
    assert Path(task_dir(tasks[0].pk) / "out" / "probe.txt").exists()
