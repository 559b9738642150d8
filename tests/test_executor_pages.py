"""Task pages and executor pages: what people see and may do."""

from __future__ import annotations

import pytest

from models_app.models import ExecutorImage, Task
from models_app.taskdir import task_dir
from tests.conftest import api_as, logged_in
from tests.executors_util import HERE
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed(trainer, workspace):
    image = ExecutorImage.objects.create(name="det", state="ready", templates={"training": {}})
    task = Task.objects.create(
        user=trainer,
        project=ProjectFactory(owner=trainer),
        kind="training",
        image=image,
        runner="docker",
        state="error",
        error_code="300102",
        error_message="CUDA out of memory at step 3",
        log_tail="Traceback...",
        config={"epochs": 3},
        parameters={"task_type": "training", "class_names": ["a"]},
    )
    (task_dir(task.pk) / "out").mkdir(parents=True)
    (task_dir(task.pk) / "out" / "ymir-executor-out.log").write_text("full log line\n")
    return task


def test_task_page_explains_the_error_and_serves_the_log(trainer, failed):
    client = logged_in(trainer)
    page = client.get(f"/tasks/{failed.pk}/").content.decode()
    assert "out of GPU memory" in page and "CUDA out of memory at step 3" in page and "Traceback..." in page
    assert "epochs: 3" in page and f"/tasks/{failed.pk}/log" in page and "hx-trigger" not in page
    log = client.get(f"/tasks/{failed.pk}/log")
    assert b"".join(log.streaming_content) == b"full log line\n"
    listing = client.get("/tasks/?state=error&kind=training").content.decode()
    assert f"/tasks/{failed.pk}/" in listing
    assert f"/tasks/{failed.pk}/" not in client.get("/tasks/?state=done").content.decode()


def test_other_users_cannot_see_or_cancel_a_task(failed):
    stranger = logged_in(UserFactory())
    for url in (f"/tasks/{failed.pk}/", f"/tasks/{failed.pk}/log"):
        assert stranger.get(url).status_code == 404
    assert stranger.post(f"/tasks/{failed.pk}/cancel").status_code == 404
    assert api_as(UserFactory()).post(f"/api/v1/tasks/{failed.pk}/cancel").status_code == 404


def test_cancel_a_waiting_task_from_the_page_and_the_api(trainer, failed):
    Task.objects.filter(pk=failed.pk).update(state="queued", error_code="", error_message="")
    page = logged_in(trainer).get(f"/tasks/{failed.pk}/").content.decode()
    assert "hx-trigger" in page and "Cancel" in page
    response = logged_in(trainer).post(f"/tasks/{failed.pk}/cancel")
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.state == "terminated"
    again = api_as(trainer).post(f"/api/v1/tasks/{failed.pk}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "task_final"
    body = api_as(trainer).get(f"/api/v1/tasks/{failed.pk}").json()
    assert body["state"] == "terminated" and body["error_meaning"] == "Cancelled by the user."


def test_executor_pages_are_for_admins(trainer, admin_user, failed):
    assert logged_in(trainer).get("/manage/executors/").status_code == 403
    assert api_as(trainer).post("/api/v1/executors", {"name": "x", "reference": "a/b:1"}).status_code == 403
    client = logged_in(admin_user)
    page = client.get("/manage/executors/").content.decode()
    assert "det" in page
    bad = client.post("/manage/executors/", {"kind": "docker", "name": "evil", "reference": "x;rm -rf /"})
    assert bad.status_code == 422 and not ExecutorImage.objects.filter(name="evil").exists()
    response = client.post(
        "/manage/executors/",
        {
            "kind": "local",
            "name": "local contract",
            "command": f"/bin/sh {HERE}/contract/start.sh",
            "folder": str(HERE / "contract"),
        },
    )
    local = ExecutorImage.objects.get(name="local contract")
    assert response.status_code == 302 and local.state == "ready"
    assert local.task_types == ["training", "mining", "infer"]
    assert local.command == ["/bin/sh", f"{HERE}/contract/start.sh"]
    detail = client.get(f"/manage/executors/{local.pk}/").content.decode()
    assert "epochs: 3" in detail
    client.post(
        f"/manage/executors/{local.pk}/",
        {"action": "save", "name": "local contract", "is_shared": "on", "related": [failed.image_id]},
    )
    local.refresh_from_db()
    assert local.is_shared and list(local.related.values_list("pk", flat=True)) == [failed.image_id]
    client.post(f"/manage/executors/{local.pk}/", {"action": "copy", "name": "copy of contract"})
    assert ExecutorImage.objects.get(name="copy of contract").templates == local.templates
    client.post(f"/manage/executors/{failed.image_id}/", {"action": "delete"})
    assert ExecutorImage.objects.filter(pk=failed.image_id).exists()  # in use by a task
    client.post(f"/manage/executors/{local.pk}/", {"action": "delete"})
    assert not ExecutorImage.objects.filter(pk=local.pk).exists()
