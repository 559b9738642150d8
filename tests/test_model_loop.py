"""The model loop end to end through the API, a real worker, the local runner and the default detector:
import synthetic sets, train two stages (each then evaluated by the platform), mine top-k from a pool with
pre-annotations, infer on a test set, diagnose, and check that the TP/FP/FN/MTP counts add up."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets.demo import make_image
from datasets.models import Box, DatasetVersion, PredictionSet
from datasets.services import demo_classes_ensure, demo_import_start
from models_app import landing
from models_app.evaluations import box_outcomes
from models_app.executors import detector_register
from models_app.models import ModelStage, ModelVersion, Task
from models_app.tensorboard import read_scalars
from tests.conftest import api_as, logged_in
from tests.detector_util import detector_python
from tests.executors_util import until
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _ready(version: DatasetVersion) -> DatasetVersion:
    until(lambda: DatasetVersion.objects.get(pk=version.pk).state == "ready", 120, f"import of {version}")
    return DatasetVersion.objects.get(pk=version.pk)


def _done(task_id: int, timeout: float = 240) -> Task:
    def final() -> bool:
        return Task.objects.get(pk=task_id).is_final

    until(final, timeout, f"task {task_id}")
    task = Task.objects.get(pk=task_id)
    assert task.state == Task.State.DONE, (task.error_code, task.error_message, task.log_tail[-3000:])
    return task


def test_train_evaluate_mine_infer_and_diagnose(worker, workspace, tmp_path):
    detector_python()
    user = UserFactory()
    demo_classes_ensure(user)
    project = ProjectFactory(owner=user)
    train = demo_import_start(user=user, project=project, name="train", count=40, seed=5, start=0)
    val = demo_import_start(user=user, project=project, name="val", count=12, seed=5, start=100)
    pool = demo_import_start(user=user, project=project, name="pool", count=16, seed=5, start=200, gt=False)
    test = demo_import_start(user=user, project=project, name="test", count=10, seed=5, start=300)
    train, val, pool, test = (_ready(v) for v in (train, val, pool, test))
    image = detector_register()
    assert image is not None
    api = api_as(user)

    # training: two stages (epoch 2 and epoch 4, "best" a copy of one of them)
    config = {"epochs": 4, "save_every_epochs": 2, "image_size": 128, "batch_size": 8, "mosaic": 0.0}
    response = api.post(
        f"/api/v1/projects/{project.pk}/trainings",
        {
            "image_id": image.pk,
            "train_version_id": train.pk,
            "val_version_id": val.pk,
            "class_names": list(train.class_counts["gt"]),
            "config": config,
            "model_name": "lego",
        },
    )
    assert response.status_code == 202, response.content
    trained = _done(response.json()["id"], 300)
    model = ModelVersion.objects.get(pk=trained.result["landed"]["model_version"])
    stages = {s.name: s for s in model.stages.all()}
    assert {"epoch_2", "epoch_4"} <= set(stages), stages

    # every stage is inferred on the validation set and evaluated by the platform
    for task_id in trained.result["landed"]["stage_evaluations"]:
        _done(task_id)

    def evaluated() -> bool:
        return all(s.metrics.get("AP50") is not None for s in ModelStage.objects.filter(version=model))

    until(evaluated, 120, "the platform's evaluation of every stage")
    body = api.get(f"/api/v1/models/{model.pk}").json()
    assert len(body["stages"]) == len(stages)
    for stage in body["stages"]:
        assert 0 <= stage["metrics"]["AP50"] <= 1 and stage["metrics"]["evaluation"]
    best = ModelStage.objects.get(version=model, name=model.recommended_stage)
    # a user's own diagnosis of those predictions, at other thresholds, leaves the stage's numbers alone
    before = best.metrics
    val_set = PredictionSet.objects.get(version=val, model_info__evaluate_stage=best.pk)
    response = api.post("/api/v1/evaluations", {"version_id": val.pk, "prediction_set_ids": [val_set.pk], "ious": 0.5})
    assert response.status_code == 201 and ModelStage.objects.get(pk=best.pk).metrics == before

    # the model page: the platform's mAP per stage, training curves read from the run's TensorBoard files
    page = logged_in(user).get(f"/models/{model.pk}/").content.decode()
    assert 'id="chart-curve-loss"' in page and 'id="chart-curve-map"' in page
    assert len(re.findall(r'href="/evaluations/\d+/"', page)) == len(stages)  # each stage's mAP links to its diagnosis
    events = next((landing.model_dir(model.pk) / "tensorboard").rglob("*tfevents*"))
    full = read_scalars(events.parent)
    assert len(full["train/loss"]) == 4
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "events.out.tfevents.1").write_bytes(events.read_bytes()[: events.stat().st_size // 2])
    assert 0 < sum(map(len, read_scalars(torn).values())) < sum(map(len, full.values()))
    (torn / "events.out.tfevents.1").write_bytes(b"\xff" * 100)
    assert read_scalars(torn) == {}

    # try the model on one image (the same onnxruntime path as deployment), and what it refuses
    client = logged_in(user)
    data, _boxes = make_image(5, 0, 320, 240)
    url = f"/models/{model.pk}/"
    tried = client.post(url, {"stage": best.pk, "score_threshold": 0.0, "image": SimpleUploadedFile("a.jpg", data)})
    html = tried.content.decode()
    assert "data:image/jpeg;base64," in html and re.search(r"\d+ boxes? from stage best in [\d.]+ ms", html)
    refusals = [
        ({"stage": best.pk, "score_threshold": 0.3}, "Give either an image file or an image URL."),
        (
            {"stage": best.pk, "score_threshold": 0.3, "url": "http://127.0.0.1:5432/x.jpg"},
            "a loopback, link-local or private address",
        ),
        ({"stage": best.pk, "score_threshold": 2}, "between 0 and 1"),
        ({"stage": best.pk, "image": SimpleUploadedFile("x.jpg", b"not an image")}, "not an image"),
    ]
    for payload, message in refusals:
        html = client.post(url, payload).content.decode()
        assert message in html, (payload, html[-3000:])

    # the trained model as YMIR's package into another project, and its ONNX graph alone (classes from metadata)
    package = b"".join(api.get(f"/api/v1/models/{model.pk}/package").streaming_content)
    elsewhere = ProjectFactory(owner=user)
    response = api.post_multipart(
        f"/api/v1/projects/{elsewhere.pk}/models", {"package": SimpleUploadedFile("lego.tar.gz", package)}
    )
    assert response.status_code == 201, response.content
    assert response.json()["class_names"] == model.class_names and len(response.json()["stages"]) == len(stages)
    onnx = (landing.model_dir(model.pk) / next(f for f in best.files if f.endswith(".onnx"))).read_bytes()
    response = api.post_multipart(
        f"/api/v1/projects/{elsewhere.pk}/models", {"package": SimpleUploadedFile("best.onnx", onnx), "name": "graph"}
    )
    assert response.status_code == 201, response.content
    graph = response.json()
    assert graph["class_names"] == model.class_names and graph["stages"][0]["name"] == "default"
    tried = client.post(
        f"/models/{graph['id']}/",
        {"stage": graph["stages"][0]["id"], "score_threshold": 0.0, "image": SimpleUploadedFile("a.jpg", data)},
    )
    assert re.search(r"\d+ boxes? from stage default", tried.content.decode())

    # mining: the 5 best of 16 pool images, with pre-annotations, as a new dataset
    response = api.post(
        f"/api/v1/projects/{project.pk}/minings",
        {
            "image_id": image.pk,
            "candidates_version_id": pool.pk,
            "stage_id": best.pk,
            "top_k": 5,
            "also_infer": True,
            "output_name": "mined",
        },
    )
    assert response.status_code == 202, response.content
    mined_task = _done(response.json()["id"])
    mined = DatasetVersion.objects.get(pk=mined_task.result["landed"]["dataset_version"])
    assert mined.asset_count == 5 and mined.group.name == "mined"
    assert PredictionSet.objects.filter(version=mined).count() == 1
    assert mined.report["predicted_boxes"] == Box.objects.filter(version=mined, prediction_set__isnull=False).count()
    mined_page = logged_in(user).get(f"/datasets/{mined.pk}/").content.decode()
    assert f"Labelling cost estimate: {mined.report['predicted_boxes']} predicted boxes" in mined_page

    # inference on the test set, then diagnosis
    response = api.post("/api/v1/inferences", {"stage_ids": [best.pk], "version_ids": [test.pk]})
    assert response.status_code == 202, response.content
    (infer,) = response.json()
    inferred = _done(infer["id"])
    pset = PredictionSet.objects.get(pk=inferred.result["landed"]["prediction_set"])
    response = api.post("/api/v1/evaluations", {"version_id": test.pk, "prediction_set_ids": [pset.pk]})
    assert response.status_code == 201, response.content
    stats = response.json()["result"]["sets"][0]["stats"]
    assert stats["AP50"] is not None and 0 <= stats["AP"] <= stats["AP50"] <= 1

    tags = box_outcomes(test, pset, iou=0.5, score_threshold=0.2)
    counts = {k: list(tags.values()).count(k) for k in ("TP", "FP", "FN", "MTP")}
    assert counts["TP"] == counts["MTP"]
    assert counts["TP"] + counts["FP"] == Box.objects.filter(prediction_set=pset, score__gte=0.2).count()
    assert counts["MTP"] + counts["FN"] == test.gt_box_count
