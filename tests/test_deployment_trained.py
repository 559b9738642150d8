"""A model trained by the default detector, published and called over real HTTP (a live server): the same
boxes as the executor's own inference on the same image; the int8 graph's mAP shown beside the float one."""

from __future__ import annotations

import pytest
import requests

from core.tokens import token_issue
from datasets.models import Box, DatasetAsset, DatasetVersion
from datasets.services import demo_classes_ensure, demo_import_start
from datasets.store import asset_path
from deployment import services
from models_app.executors import detector_register
from models_app.models import ModelVersion, Task
from models_app.training import inference_start, training_start
from tests.conftest import logged_in
from tests.detector_util import detector_python
from tests.executors_util import until
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _done(task_id: int) -> Task:
    until(lambda: Task.objects.get(pk=task_id).is_final, 300, f"task {task_id}")
    task = Task.objects.get(pk=task_id)
    assert task.state == Task.State.DONE, (task.error_code, task.error_message, task.log_tail[-2000:])
    return task


def test_a_trained_model_served_over_http_gives_the_executors_boxes(worker, live_server, workspace):
    detector_python()
    user = UserFactory()
    demo_classes_ensure(user)
    project = ProjectFactory(owner=user)
    versions = [
        demo_import_start(user=user, project=project, name=name, count=count, seed=6, start=start)
        for name, count, start in (("train", 30, 0), ("val", 8, 100), ("test", 4, 200))
    ]
    for version in versions:
        until(lambda v=version: DatasetVersion.objects.get(pk=v.pk).state == "ready", 120, "imports")
    train, val, test = (DatasetVersion.objects.get(pk=v.pk) for v in versions)
    image = detector_register()
    assert image is not None
    config = {"epochs": 12, "save_every_epochs": 12, "image_size": 160, "batch_size": 8, "mosaic": 0.0}
    training = training_start(
        user=user,
        project=project,
        image=image,
        train=train,
        val=val,
        class_names=sorted(train.class_counts["gt"]),
        config=config,
    )
    _done(training.pk)
    model = ModelVersion.objects.get(pk=Task.objects.get(pk=training.pk).result["landed"]["model_version"])
    stage = model.stages.get(name=model.recommended_stage)
    (inference,) = inference_start(user=user, stages=[stage], versions=[test], config={"conf_threshold": 0.01})
    done = _done(inference.pk)
    pset_id = done.result["landed"]["prediction_set"]

    algorithm = services.algorithm_publish(user=user, stage=stage, score_threshold=0.02)
    _token, secret = token_issue(user=user, name="client", kind="personal", days=None)
    headers = {"Authorization": f"Bearer {secret}"}
    compared = 0
    for item in DatasetAsset.objects.filter(version=test).select_related("asset"):
        data = asset_path(item.asset.sha1).read_bytes()
        answer = requests.post(
            f"{live_server.url}/api/v1/algorithms/{algorithm.pk}/predict",
            files={"image": ("x.jpg", data, "image/jpeg")},
            headers=headers,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        served = [
            (b["class_name"], b["x1"], b["y1"], b["x2"], b["y2"], b["score"])
            for b in answer.json()["results"][0]["boxes"]
        ]
        executor = [
            (b.label.name, b.x1, b.y1, b.x2, b.y2, b.score or 0.0)
            for b in Box.objects.filter(prediction_set_id=pset_id, asset=item.asset).select_related("label")
        ]

        def same(a: tuple, b: tuple) -> bool:
            close = all(abs(x - y) <= 1.0 for x, y in zip(a[1:5], b[1:5], strict=True))
            return a[0] == b[0] and close and abs(a[5] - b[5]) <= 0.001

        # every box clear of the thresholds (0.02 served, 0.01 executor) is found on the other side, and back
        for mine in (s for s in served if s[5] >= 0.03):
            assert any(same(mine, theirs) for theirs in executor), (mine, executor)
        for theirs in (e for e in executor if e[5] >= 0.03):
            assert any(same(mine, theirs) for mine in served), (theirs, served)
        compared += len([s for s in served if s[5] >= 0.03])
    top = Box.objects.filter(prediction_set_id=pset_id).order_by("-score").values_list("score", flat=True)[:3]
    assert compared > 0, list(top)  # the model found something to compare

    report = services.quantize_and_compare(algorithm.pk)
    assert report["state"] == "done" and report["int8_bytes"] < report["float_bytes"]
    assert report["float"]["images"] == 8 and report["int8"]["images"] == 8
    page = logged_in(user).get(f"/algorithms/{algorithm.pk}/").content.decode()
    assert 'class="float-map"' in page and 'class="int8-map"' in page
