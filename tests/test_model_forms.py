"""Training, mining and inference forms and API: what is refused (clearly, with nothing started) and what a
valid request records."""

from __future__ import annotations

import pytest

from datasets.models import DatasetVersion, PredictionSet
from models_app.models import ExecutorImage, ModelGroup, ModelStage, ModelVersion, Task
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.executors_util import small_datasets
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
TRAINING = {"epochs": 10, "learning_rate": 0.01, "ema": True, "model_size": "s", "export_format": "ark:raw"}


def _image(name: str = "det", **templates) -> ExecutorImage:
    return ExecutorImage.objects.create(
        name=name,
        kind=ExecutorImage.Kind.LOCAL,
        command=["true"],
        state=ExecutorImage.State.READY,
        is_shared=True,
        templates=templates or {"training": TRAINING, "mining": {"top": 1}, "infer": {"conf": 0.1}},
    )


def _model(project, image, train, val) -> ModelStage:
    group = ModelGroup.objects.create(project=project, name=f"m-{image.name}")
    version = ModelVersion.objects.create(
        group=group, number=1, image=image, train_version=train, val_version=val, class_names=["a", "b"]
    )
    return ModelStage.objects.create(version=version, name="best", files=["best/model.onnx"])


@pytest.fixture
def setup(tmp_path, workspace):
    user = UserFactory()
    project, train, val = small_datasets(user, tmp_path)
    return user, project, train, val, _image()


def _post(client, url, data):
    return client.post(url, {**data, "start": "1"})


def test_the_training_form_starts_a_task_with_typed_hyper_parameters(setup):
    user, project, train, val, image = setup
    client = logged_in(user)
    page = client.get(f"/projects/{project.pk}/train/?train={train.pk}").content.decode()
    assert 'name="cfg_epochs"' in page and 'name="cfg_export_format"' not in page  # the platform's own key
    response = _post(
        client,
        f"/projects/{project.pk}/train/",
        {
            "image": image.pk,
            "train": train.pk,
            "val": val.pk,
            "class_names": ["a", "b"],
            "overlap": "stop",
            "gpu_count": 0,
            "cfg_epochs": "3",
            "cfg_learning_rate": "0.002",
            "cfg_ema": "",
            "cfg_model_size": "m",
            "model_name": "first",
        },
    )
    task = Task.objects.get(kind=Task.Kind.TRAINING)
    assert response.status_code == 302 and response["Location"] == f"/tasks/{task.pk}/"
    assert task.parameters["user_config"] == {"epochs": 3, "learning_rate": 0.002, "ema": False, "model_size": "m"}
    assert task.parameters["class_names"] == ["a", "b"] and task.parameters["model_name"] == "first"


def test_wrong_types_missing_targets_overlap_and_a_foreign_pretrained_model_are_refused(setup, tmp_path):
    user, project, train, val, image = setup
    client = logged_in(user)
    base = {"image": image.pk, "train": train.pk, "val": val.pk, "class_names": ["a"], "gpu_count": 0}
    base |= {"overlap": "stop", "cfg_epochs": "3", "cfg_learning_rate": "0.1", "cfg_model_size": "s"}
    url = f"/projects/{project.pk}/train/"

    page = _post(client, url, {**base, "cfg_epochs": "three"}).content.decode()
    assert "cfg_epochs" in page and "Enter a whole number" in page

    # a class the training set has no boxes of
    from datasets.classes import class_create

    class_create(user=user, name="zebra")
    page = _post(client, url, {**base, "class_names": ["zebra"]}).content.decode()
    assert "no boxes of: zebra" in page or "not one of the available choices" in page

    # the same images in both sets
    page = _post(client, url, {**base, "val": train.pk}).content.decode()
    assert "are in both the training and the validation set" in page

    # a pretrained model of another image
    other = _image("other")
    stage = _model(project, other, train, val)
    page = _post(client, url, {**base, "pretrained": stage.pk}).content.decode()
    assert "Select a valid choice" in page  # only models of the same image are offered
    assert not Task.objects.filter(kind=Task.Kind.TRAINING).exists()

    api = api_as(user)
    payload: dict[str, object] = {
        "image_id": image.pk,
        "train_version_id": train.pk,
        "val_version_id": val.pk,
        "class_names": ["a"],
    }
    bad: list[tuple[dict[str, object], str]] = [
        ({"config": {"epochs": "ten"}}, "invalid_config"),
        ({"config": {"task_id": "x"}}, "invalid_config"),
        ({"class_names": ["zebra"]}, "target_absent"),
        ({"val_version_id": train.pk}, "overlap"),
        ({"pretrained_stage_id": stage.pk}, "pretrained_other_image"),
        ({"overlap": "whatever", "val_version_id": train.pk}, "invalid_overlap"),
    ]
    for change, code in bad:
        response = api.post(f"/api/v1/projects/{project.pk}/trainings", {**payload, **change})
        assert response.status_code == 422 and response.json()["error"]["code"] == code, (change, response.content)
    assert not Task.objects.filter(kind=Task.Kind.TRAINING).exists()

    # dropping a full overlap would leave nothing; a partial one dropped from the validation set is recorded
    response = api.post(
        f"/api/v1/projects/{project.pk}/trainings", {**payload, "val_version_id": train.pk, "overlap": "drop_val"}
    )
    assert response.status_code == 422 and "no validation images" in response.json()["error"]["message"]
    files = {
        "images/same.jpg": jpeg(colour=(10, 10, 10)),  # the bytes of the training set's first image
        "gt/same.xml": voc("same.jpg", [("a", 1, 1, 9, 9)]),
        "images/new.jpg": jpeg(colour=(1, 2, 3)),
        "gt/new.xml": voc("new.jpg", [("b", 1, 1, 9, 9)]),
    }
    mixed = import_now(user, project, name="mixed", upload=make_zip(tmp_path / "mixed.zip", files))
    response = api.post(
        f"/api/v1/projects/{project.pk}/trainings", {**payload, "val_version_id": mixed.pk, "overlap": "drop_val"}
    )
    assert response.status_code == 202, response.content
    task = Task.objects.get(kind=Task.Kind.TRAINING)
    assert task.parameters["overlap"] == "drop_val" and task.parameters["overlap_count"] == 1
    from models_app.training import overlap_skip

    assert overlap_skip(task.parameters)[1] and not overlap_skip(task.parameters)[0]

    # someone else's project or dataset is not reachable
    stranger = api_as(UserFactory())
    assert stranger.post(f"/api/v1/projects/{project.pk}/trainings", payload).status_code == 404


def test_target_counts_show_each_class_share(setup):
    user, project, train, _val, _img = setup
    page = (
        logged_in(user)
        .get(f"/projects/{project.pk}/train/targets", {"train": train.pk, "class_names": ["a", "b"]})
        .content.decode()
    )
    assert page.count("<tr>") == 3 and "100%" in page


def test_mining_with_top_k_covering_the_pool_needs_no_run(setup):
    user, project, train, val, image = setup
    stage = _model(project, image, train, val)
    response = api_as(user).post(
        f"/api/v1/projects/{project.pk}/minings",
        {"image_id": image.pk, "candidates_version_id": val.pk, "stage_id": stage.pk, "top_k": 50},
    )
    assert response.status_code == 202, response.content
    task = Task.objects.get(pk=response.json()["id"])
    assert task.state == Task.State.DONE and not task.run_ref
    mined = DatasetVersion.objects.get(pk=task.result["landed"]["dataset_version"])
    assert mined.asset_count == val.asset_count and mined.state == "ready"
    assert mined.report["scored"] == 0
    refused = api_as(user).post(
        f"/api/v1/projects/{project.pk}/minings",
        {
            "image_id": image.pk,
            "candidates_version_id": val.pk,
            "stage_id": stage.pk,
            "top_k": 1,
            "class_balance": True,
        },
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "needs_predictions"


def test_mining_excludes_already_labelled_images_when_asked(setup):
    from models_app import landing

    user, project, train, val, image = setup
    stage = _model(project, image, train, val)
    response = api_as(user).post(
        f"/api/v1/projects/{project.pk}/minings",
        {
            "image_id": image.pk,
            "candidates_version_id": train.pk,
            "stage_id": stage.pk,
            "top_k": 2,
            "exclude_labelled": True,
        },
    )
    task = Task.objects.get(pk=response.json()["id"])
    assert task.state == Task.State.QUEUED or task.state == Task.State.PENDING
    # every image of the training set has ground truth: nothing is left to mine
    scores = [(sha1, 0.5) for sha1, _ in landing.all_candidates(train.pk)]
    assert landing._without_excluded(task, scores) == []


def test_inference_needs_an_image_that_infers_and_makes_one_task_per_pair(setup):
    user, project, train, val, image = setup
    stage = _model(project, image, train, val)
    api = api_as(user)
    response = api.post("/api/v1/inferences", {"stage_ids": [stage.pk], "version_ids": [train.pk, val.pk]})
    assert response.status_code == 202 and len(response.json()) == 2
    trainer_only = _image("trainer", training=TRAINING)
    lonely = _model(project, trainer_only, train, val)
    response = api.post("/api/v1/inferences", {"stage_ids": [lonely.pk], "version_ids": [val.pk]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_infer_image"
    assert (
        api_as(UserFactory()).post("/api/v1/inferences", {"stage_ids": [stage.pk], "version_ids": [val.pk]}).status_code
        == 404
    )
    assert not PredictionSet.objects.exists()


def test_diversity_skips_near_duplicates_and_class_balance_lifts_rare_classes(setup, tmp_path):
    import io

    from PIL import Image

    from datasets.demo import make_image
    from datasets.models import Asset
    from models_app import mining

    user, project, train, _val, _img = setup
    originals = [make_image(11, i, 160, 120)[0] for i in range(3)]
    with Image.open(io.BytesIO(originals[0])) as first:
        again = io.BytesIO()
        first.save(again, format="JPEG", quality=60)  # other bytes, the same picture
    files = {f"images/{i}.jpg": data for i, data in enumerate([*originals, again.getvalue()])}
    pool = import_now(user, project, name="pool", upload=make_zip(tmp_path / "pool.zip", files))
    sha1 = dict(Asset.objects.filter(pk__in=pool.items.values("asset_id")).values_list("size_bytes", "sha1"))
    by_name = [sha1[len(data)] for data in [*originals, again.getvalue()]]
    scores = [(by_name[0], 0.9), (by_name[3], 0.8), (by_name[1], 0.7), (by_name[2], 0.6)]
    taken, skipped = mining.diverse(scores, top_k=3)
    assert [s for s, _ in taken] == [by_name[0], by_name[1], by_name[2]] and skipped == 1

    # the training set has 4 boxes of "a" and 4 of "b" (small_datasets): make "b" rare by counting a larger set
    from datasets.models import Box

    Box.objects.filter(version=train, label__name="b").exclude(
        pk=Box.objects.filter(version=train, label__name="b").order_by("id").first().pk  # type: ignore[union-attr]
    ).delete()
    predictions = {
        by_name[0]: [{"class_name": "a", "score": 0.9}],
        by_name[1]: [{"class_name": "b", "score": 0.9}],
    }
    ranked = mining.class_balanced([(by_name[0], 0.5), (by_name[1], 0.4)], predictions, train.pk)
    assert [s for s, _ in ranked] == [by_name[1], by_name[0]]
    assert ranked[0][1] == pytest.approx(0.4 * 2)  # sqrt(4 boxes of a / 1 of b)


def test_trying_a_model_without_an_onnx_graph_starts_a_one_image_task(setup):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from datasets.demo import make_image

    user, project, train, val, image = setup
    stage = _model(project, image, train, val)  # its files hold no model.onnx
    client = logged_in(user)
    page = client.get(f"/models/{stage.version_id}/").content.decode()
    assert "has no ONNX graph" in page
    data, _boxes = make_image(3, 1, 160, 120)
    html = client.post(
        f"/models/{stage.version_id}/",
        {"stage": stage.pk, "score_threshold": 0.3, "image": SimpleUploadedFile("x.jpg", data)},
    ).content.decode()
    task = Task.objects.get(kind=Task.Kind.INFERENCE)
    assert f"/tasks/{task.pk}/" in html
    tried = DatasetVersion.objects.get(pk=task.parameters["candidates"])
    assert tried.group.name == "tried-images" and tried.asset_count == 1 and tried.items.get().name == "x.jpg"
    assert task.parameters["model_stage"] == stage.pk
    html = client.post(
        f"/models/{stage.version_id}/",
        {"stage": stage.pk, "score_threshold": 0.3, "image": SimpleUploadedFile("y.jpg", b"text")},
    ).content.decode()
    assert "error-box" in html and Task.objects.filter(kind=Task.Kind.INFERENCE).count() == 1
