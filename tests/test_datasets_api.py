"""The datasets API, and an import carried by a real Celery worker through the configured broker."""

from __future__ import annotations

import time

import pytest
from django.conf import settings as django_settings

from datasets.demo import CLASSES, write_voc_zip
from datasets.services import import_execute
from tests.conftest import api_as
from tests.datasets_util import jpeg, make_zip
from tests.factories import ProjectFactory


def _upload(api, project_id, path, **fields):
    with path.open("rb") as handle:
        return api.client.post(
            f"/api/v1/projects/{project_id}/datasets",
            data={"file": handle, **fields},
            headers={"Authorization": f"Bearer {api.token}"},
        )


@pytest.mark.django_db
def test_upload_then_read_the_dataset(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    api = api_as(trainer)
    archive = write_voc_zip(tmp_path / "lego.zip", count=5, seed=1, width=160, height=120)
    response = _upload(api, project.pk, archive, name="lego", unknown_classes="add")
    assert response.status_code == 202, response.content
    created = response.json()
    assert api.get(f"/api/v1/tasks/{created['task_id']}").json()["state"] == "pending"
    import_execute(created["task_id"])
    data = api.get(f"/api/v1/datasets/{created['id']}").json()
    assert data["state"] == "ready" and data["asset_count"] == 5 and data["name"] == "lego"
    assert sum(data["class_counts"]["gt"].values()) == data["gt_box_count"] > 0
    assert set(data["class_counts"]["gt"]) <= set(CLASSES)
    task = api.get(f"/api/v1/tasks/{created['task_id']}").json()
    assert task["state"] == "done" and task["percent"] == 1.0
    copy = api.post(
        f"/api/v1/projects/{project.pk}/datasets", {"name": "copy", "source": {"dataset_id": created["id"]}}
    )
    assert copy.status_code == 202
    import_execute(copy.json()["task_id"])
    assert api.get(f"/api/v1/datasets/{copy.json()['id']}").json()["parents"] == [created["id"]]


@pytest.mark.django_db
def test_import_requests_are_validated_and_scoped(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    someone_else = ProjectFactory()
    api = api_as(trainer)
    archive = make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()})
    assert _upload(api, someone_else.pk, archive, name="x").status_code == 404
    cases = [
        {"name": "x", "source": {}},
        {"name": "x", "source": {"path": "a", "dataset_id": 1}},
        {"name": "x", "source": {"dataset_id": 1}, "format": "pascal"},
        {"name": "", "source": {"dataset_id": 1}},
        {"source": {"dataset_id": 1}},
    ]
    for body in cases:
        response = api.post(f"/api/v1/projects/{project.pk}/datasets", body)
        assert response.status_code == 422, (body, response.content)
        assert response.json()["error"]["code"] in ("invalid", "invalid_source")
    response = api.post(f"/api/v1/projects/{project.pk}/datasets", {"name": "x", "source": {"path": "../etc"}})
    assert response.status_code == 422 and response.json()["error"]["code"] == "source_refused"
    theirs = api_as(someone_else.owner)
    created = _upload(theirs, someone_else.pk, archive, name="private").json()
    assert api.get(f"/api/v1/datasets/{created['id']}").status_code == 404
    assert api.get(f"/api/v1/tasks/{created['task_id']}").status_code == 404


def _wait_final(api, task_id, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        task = api.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] in ("done", "error", "terminated"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {task}")


@pytest.mark.worker
def test_import_runs_on_a_real_worker(worker, trainer, tmp_path):
    project = ProjectFactory(owner=trainer)
    api = api_as(trainer)
    archive = write_voc_zip(tmp_path / "lego.zip", count=8, seed=2, width=160, height=120)
    created = _upload(api, project.pk, archive, name="lego", unknown_classes="add").json()
    task = _wait_final(api, created["task_id"])
    assert task["state"] == "done", task
    data = api.get(f"/api/v1/datasets/{created['id']}").json()
    assert data["state"] == "ready" and data["asset_count"] == 8
    assert not list((django_settings.YMIR_WORKSPACE / "uploads").iterdir())  # the upload is removed once imported


@pytest.mark.worker
def test_an_import_whose_worker_is_killed_ends_in_error_and_can_be_retried(worker, trainer, tmp_path):
    import signal

    from datasets.models import DatasetVersion
    from datasets.services import dataset_import_retry
    from models_app.models import Task
    from models_app.services import tasks_reconcile

    project = ProjectFactory(owner=trainer)
    api = api_as(trainer)
    archive = write_voc_zip(tmp_path / "big.zip", count=1500, seed=5, width=320, height=240)
    created = _upload(api, project.pk, archive, name="killed", unknown_classes="add").json()
    deadline = time.monotonic() + 60
    while Task.objects.get(pk=created["task_id"]).state != "running":
        assert time.monotonic() < deadline, "the import never started"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    version = DatasetVersion.objects.get(pk=created["id"])
    assert version.state != "ready"  # never half-ready
    assert tasks_reconcile(stale_seconds=0) == [created["task_id"]]
    version.refresh_from_db()
    task = Task.objects.get(pk=created["task_id"])
    assert (version.state, task.state, task.error_code) == ("error", "error", "worker_lost")
    assert not version.items.exists() and not version.boxes.exists()
    assert "stopped" in api.get(f"/api/v1/tasks/{task.pk}").json()["error"]
    dataset_import_retry(user=trainer, version=version)
    version.refresh_from_db()
    from datasets.services import import_execute

    import_execute(version.task_id)
    version.refresh_from_db()
    assert version.state == "ready" and version.asset_count == 1500
