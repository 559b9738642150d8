"""The executor conformance check: a real run of the contract-test executors through the local runner."""

from __future__ import annotations

import pytest

from core.errors import Conflict, Invalid
from datasets.models import DatasetVersion
from datasets.services import import_execute
from models_app import conformance, jobs
from models_app.models import Task
from tests.conftest import api_as
from tests.executors_util import contract_executor, sdk_executor, until

pytestmark = pytest.mark.django_db


def _drive(check: Task) -> Task:
    """Play the workers' part: run the sample imports and the runs the check submits, step by step."""

    def step() -> bool:
        check.refresh_from_db()
        going = conformance.advance(check.pk, check.parameters["chain"])
        for version in DatasetVersion.objects.filter(state="pending", group__project__owner=check.user):
            import_execute(version.task_id)
        for sub in Task.objects.filter(parameters__conformance=check.pk):
            if sub.state == "pending":
                jobs.launch(sub.pk)
            elif sub.state == "running":
                jobs.follow(sub.pk)
        return not going

    until(step, 120, "the conformance check to end")
    check.refresh_from_db()
    return check


def _points(check: Task) -> dict[str, bool | None]:
    return {p["key"]: p["ok"] for p in check.result["points"]}


def test_the_check_reports_what_an_executor_honours(admin_user, workspace):
    image = contract_executor("local", admin_user)
    check = _drive(conformance.conformance_start(user=admin_user, image=image))
    assert check.state == "done", (check.error_code, check.error_message)
    points = _points(check)
    assert points["manifest"] is True
    assert points["training.run"] is points["mining.run"] is points["infer.run"] is True
    assert points["training.monitor"] is True and points["training.result"] is True  # protocol 1.1 stages
    assert points["training.tensorboard"] is None  # it writes none: a warning, not a failure
    assert points["mining.all"] is True and points["infer.infer_all"] is True
    # it predicts class "a" whatever the task's classes are: caught
    assert points["infer.classes"] is False and points["mining.classes"] is False
    assert check.result["passed"] is False
    image.refresh_from_db()
    assert image.conformance["task"] == check.pk and image.conformance["passed"] is False
    # the sub-runs are ordinary tasks of the check's project; its model and mined set are there to look at
    subs = Task.objects.filter(parameters__conformance=check.pk)
    assert {s.parameters["task_type"] for s in subs} == {"training", "mining", "infer"}
    assert {s.project.name for s in subs if s.project} == {conformance.PROJECT_NAME}


def test_an_sdk_executor_passes_with_warnings(admin_user, workspace):
    image = sdk_executor("local", admin_user)
    check = _drive(conformance.conformance_start(user=admin_user, image=image))
    points = _points(check)
    assert check.result["passed"] is True, check.result["points"]
    assert points["training.result"] is None  # the SDK writes the protocol-1.0 form
    assert points["infer.classes"] is True and points["infer.bounds"] is True


def test_only_admins_check_and_one_check_at_a_time(admin_user, trainer, workspace):
    image = contract_executor("local", admin_user)
    with pytest.raises(Invalid):
        conformance.conformance_start(user=trainer, image=image)
    check = conformance.conformance_start(user=admin_user, image=image)
    with pytest.raises(Conflict):
        conformance.conformance_start(user=admin_user, image=image)
    # a cancelled check stops; its chain of steps ends
    assert jobs.cancel(check) is True
    assert conformance.advance(check.pk, check.parameters["chain"]) is False
    assert conformance.advance(check.pk, "not-the-chain") is False


def test_the_check_is_started_from_the_image_page(
    admin_client, admin_user, trainer, workspace, django_capture_on_commit_callbacks
):
    image = contract_executor("local", admin_user)
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(f"/manage/executors/{image.pk}/", {"action": "conformance", "gpu_count": "0"})
    assert response.status_code == 302
    check = Task.objects.get(kind="conformance", image=image)
    _drive(check)
    page = admin_client.get(f"/manage/executors/{image.pk}/").content.decode()
    assert "Inference: predicted classes are the task" in page and "✗" in page
    response = api_as(admin_user).post(f"/api/v1/executors/{image.pk}/conformance")
    assert response.status_code == 202 and response.json()["kind"] == "conformance"
    assert api_as(trainer).post(f"/api/v1/executors/{image.pk}/conformance").status_code == 404
