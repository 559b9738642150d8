"""The iteration loop end to end (a real worker, the local runner, the built-in detector, the oracle
labeller, tiny synthetic data), and its bad inputs."""

from __future__ import annotations

import pytest

from core.errors import Conflict, Invalid
from datasets.demo import CLASSES
from datasets.models import Box, DatasetAsset, DatasetVersion
from datasets.services import demo_classes_ensure, demo_import_start
from iterations import services as loop
from iterations.models import Iteration, Round
from models_app.executors import detector_register
from models_app.models import ModelGroup, ModelStage, ModelVersion, Task
from tests.detector_util import detector_python
from tests.executors_util import until
from tests.factories import ProjectFactory, UserFactory

TINY = {"epochs": 2, "save_every_epochs": 2, "image_size": 96, "batch_size": 8, "mosaic": 0.0}


def _ready(version: DatasetVersion) -> DatasetVersion:
    until(lambda: DatasetVersion.objects.get(pk=version.pk).state == "ready", 120, f"dataset {version}")
    return DatasetVersion.objects.get(pk=version.pk)


def _step_done(round_id: int, step: str, timeout: float = 300) -> Round:
    """Drive the loop (as the beat would) until the step is done."""

    def done() -> bool:
        round_ = Round.objects.get(pk=round_id)
        loop.iteration_advance(round_.iteration_id)
        state = loop.step_states(Round.objects.get(pk=round_id))[step]
        assert state != "error", (step, Round.objects.get(pk=round_id).message)
        return state == "done"

    until(done, timeout, f"round {round_id} {step}")
    return Round.objects.get(pk=round_id)


def _finished(round_id: int, timeout: float = 300) -> Round:
    def finished() -> bool:
        loop.iteration_advance(Round.objects.get(pk=round_id).iteration_id)
        return Round.objects.get(pk=round_id).finished_at is not None

    until(finished, timeout, f"round {round_id} to finish")
    return Round.objects.get(pk=round_id)


def _sets(user, project):
    demo_classes_ensure(user)
    train = demo_import_start(user=user, project=project, name="train", count=24, seed=4, start=0)
    val = demo_import_start(user=user, project=project, name="val", count=8, seed=4, start=100)
    pool = demo_import_start(user=user, project=project, name="pool", count=30, seed=4, start=200, gt=False)
    test = demo_import_start(user=user, project=project, name="test", count=8, seed=4, start=300)
    # the oracle's hidden ground truth: the same pool images with their labels, in a project of their own
    hidden = demo_import_start(
        user=user, project=ProjectFactory(owner=user), name="pool-gt", count=30, seed=4, start=200
    )
    return [_ready(v) for v in (train, val, pool, test, hidden)]


@pytest.mark.django_db(transaction=True)
def test_two_rounds_with_the_oracle_prefill_skips_and_history(worker, workspace, settings):
    detector_python()
    settings.YMIR_ORACLE_LABELLER = True
    user = UserFactory()
    project = ProjectFactory(owner=user)
    train, val, pool, test, hidden = _sets(user, project)
    image = detector_register()
    assert image is not None
    iteration = loop.iteration_create(
        user=user,
        project=project,
        name="loop",
        train_version=train,
        pool_version=pool,
        val_version=val,
        test_versions=[test],
        training_image=image,
        mining_image=image,
        class_names=list(CLASSES),
        strategy="entropy",
        top_k=6,
        training_config=TINY,
        max_rounds=2,
        oracle_version=hidden,
    )
    with pytest.raises(Conflict) as caught:  # one loop at a time per project
        loop.iteration_create(
            user=user,
            project=project,
            name="again",
            train_version=train,
            pool_version=pool,
            val_version=val,
            training_image=image,
            mining_image=image,
            class_names=["brick_2x2"],
        )
    assert caught.value.code == "already_iterating"

    # round 0: the initial model, trained on the training set (the other steps skipped)
    r0 = iteration.rounds.get(number=0)
    assert loop.step_states(r0) == {
        "prepare": "skipped",
        "mine": "skipped",
        "label": "skipped",
        "merge": "skipped",
        "train": "todo",
    }
    loop.step_start(user=user, round_id=r0.pk, step="train")
    r0 = _finished(r0.pk)
    assert r0.best_stage is not None and r0.metrics["val"] is not None
    assert str(test.pk) in r0.metrics["tests"] and r0.metrics["tests"][str(test.pk)] is not None

    # round 1: everything prefilled from round 0
    r1 = iteration.rounds.get(number=1)
    values = loop.prefill(r1)
    assert values["model_stage"] == r0.best_stage.pk and values["pretrained"] == r0.best_stage.pk
    assert values["train"] == train.pk and values["val"] == val.pk and values["top_k"] == 6
    assert values["exclude"] == [train.pk] and values["training_config"] == TINY
    ok, why = loop.can_start(r1, "mine")
    assert not ok and "Prepare mining data" in why  # steps start only when their inputs are ready
    loop.step_start(user=user, round_id=r1.pk, step="prepare")
    with pytest.raises(Conflict) as caught:  # a second tab advancing the same step
        loop.step_start(user=user, round_id=r1.pk, step="prepare")
    assert caught.value.code == "step_started"
    r1 = _step_done(r1.pk, "prepare")
    assert r1.prepared is not None and r1.prepared.asset_count == 30
    loop.step_start(user=user, round_id=r1.pk, step="mine", options={"top_k": 5})
    r1 = _step_done(r1.pk, "mine")
    assert r1.picked is not None and r1.picked.asset_count == 5
    assert r1.picked.prediction_sets.exists()  # the model's predictions came along (pre-annotations)
    loop.step_start(user=user, round_id=r1.pk, step="label")
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.labelled is not None and r1.labelled.asset_count == 5
    picked_assets = set(DatasetAsset.objects.filter(version=r1.picked).values_list("asset_id", flat=True))
    oracle_boxes = Box.objects.filter(version=hidden, asset_id__in=picked_assets, prediction_set__isnull=True).count()
    assert r1.labelled.gt_box_count == oracle_boxes > 0  # exactly the hidden ground truth of the picked images
    loop.step_start(user=user, round_id=r1.pk, step="merge")
    r1 = _step_done(r1.pk, "merge")
    assert r1.merged is not None and r1.merged.asset_count == 24 + 5
    with pytest.raises(Conflict) as caught:  # the validation set is fixed while iterating
        loop.iteration_update(user=user, iteration=iteration, changes={"val_version": test})
    assert caught.value.code == "val_fixed"
    loop.step_start(user=user, round_id=r1.pk, step="train")
    training = Task.objects.get(pk=Round.objects.get(pk=r1.pk).training_task_id)
    assert training.parameters["train"] == r1.merged.pk and training.parameters["val"] == val.pk
    assert training.parameters["model_stage"] == r0.best_stage.pk  # the previous model as pretrained weights
    r1 = _finished(r1.pk)
    assert r1.merged is not None and r1.best_stage is not None and r1.picked is not None

    # round 2: prefilled from round 1 (its top-k, its merged set and model); skip preparing and labelling
    r2 = iteration.rounds.get(number=2)
    assert r2.base_train_id == r1.merged.pk and r2.base_stage_id == r1.best_stage.pk
    assert loop.prefill(r2)["top_k"] == 5
    assert set(loop.prefill(r2)["exclude"]) == {r1.merged.pk, r1.picked.pk}
    loop.step_skip(user=user, round_id=r2.pk, step="prepare")
    loop.step_start(user=user, round_id=r2.pk, step="mine")
    r2 = _step_done(r2.pk, "mine")
    assert r2.picked is not None and r2.picked.asset_count == 5
    loop.step_skip(user=user, round_id=r2.pk, step="label")
    assert loop.step_states(Round.objects.get(pk=r2.pk))["merge"] == "skipped"
    loop.step_start(user=user, round_id=r2.pk, step="train")
    r2 = _finished(r2.pk)
    assert Task.objects.get(pk=r2.training_task_id).parameters["train"] == r1.merged.pk

    iteration.refresh_from_db()
    assert iteration.state == Iteration.State.FINISHED  # max rounds reached
    rows = loop.history(iteration)
    assert [row["round"].number for row in rows] == [0, 1, 2]
    assert all(row["val"] is not None for row in rows)
    assert [row["train_size"] for row in rows] == [24, 29, 29]
    assert rows[1]["picked"] == 5 and rows[1]["labelled_boxes"] == oracle_boxes
    assert rows[1]["delta"] == pytest.approx(rows[1]["val"] - rows[0]["val"])


def _fake_stage(project) -> ModelStage:
    group = ModelGroup.objects.create(project=project, name="m")
    version = ModelVersion.objects.create(group=group, number=1, class_names=["brick_2x2"])
    return ModelStage.objects.create(version=version, name="best", files=[])


@pytest.mark.django_db
def test_an_empty_pool_skips_to_training_and_the_setup_says_what_is_missing(workspace, settings):
    from datasets.services import import_execute

    user = UserFactory()
    project = ProjectFactory(owner=user)
    demo_classes_ensure(user)
    versions = []
    for name, count, start in (("train", 4, 0), ("val", 2, 50), ("pool", 3, 0)):  # the pool: the training images
        version = demo_import_start(user=user, project=project, name=name, count=count, seed=1, start=start)
        import_execute(version.task_id)
        versions.append(DatasetVersion.objects.get(pk=version.pk))
    train, val, pool = versions
    image = detector_register() or pytest.skip("no detector folder")
    with pytest.raises(Invalid) as caught:
        loop.iteration_create(
            user=user,
            project=project,
            name="x",
            train_version=train,
            pool_version=None,
            val_version=val,
            training_image=image,
            mining_image=None,
            class_names=["brick_2x2"],
        )
    assert caught.value.code == "missing_setting"
    assert caught.value.details == {"missing": ["mining set", "mining image"]}
    assert loop.missing_settings({"train_version": 1}) == [
        "mining set",
        "validation set",
        "training image",
        "mining image",
        "classes",
        "top-k per round",
    ]
    stranger = UserFactory()
    with pytest.raises(Invalid):
        loop.iteration_create(
            user=stranger,
            project=project,
            name="x",
            train_version=train,
            pool_version=pool,
            val_version=val,
            training_image=image,
            mining_image=image,
            class_names=["brick_2x2"],
        )
    iteration = loop.iteration_create(
        user=user,
        project=project,
        name="loop",
        train_version=train,
        pool_version=pool,
        val_version=val,
        training_image=image,
        mining_image=image,
        class_names=["brick_2x2"],
        initial_stage=_fake_stage(project),
        top_k=2,
    )
    r1 = iteration.rounds.get()
    assert r1.number == 1  # an initial model given: no round 0
    loop.step_start(user=user, round_id=r1.pk, step="prepare")
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.prepared is not None
    from datasets.services import operation_run

    operation_run(r1.prepared.task_id)
    loop.step_start(user=user, round_id=r1.pk, step="mine")
    r1 = Round.objects.get(pk=r1.pk)
    assert loop.step_states(r1) == {
        "prepare": "done",
        "mine": "skipped",
        "label": "skipped",
        "merge": "skipped",
        "train": "todo",
    }
    assert "nothing" in r1.message
    assert r1.pick_task is None  # no mining task for an empty pool
    # the datasets of a loop cannot be deleted
    from datasets.services import dataset_delete

    with pytest.raises(Conflict) as in_use:
        dataset_delete(user=user, version=val)
    assert in_use.value.code == "in_use"
    # the oracle is refused where it is off
    settings.YMIR_ORACLE_LABELLER = False
    with pytest.raises(Invalid) as caught:
        loop.iteration_create(
            user=user,
            project=ProjectFactory(owner=user),
            name="o",
            train_version=train,
            pool_version=pool,
            val_version=val,
            training_image=image,
            mining_image=image,
            class_names=["brick_2x2"],
            oracle_version=pool,
        )
    assert caught.value.code in ("oracle_off", "invalid_dataset")


def _small_loop_sets(user, project):
    from datasets.services import import_execute

    demo_classes_ensure(user)
    versions = []
    for name, count, start, gt in (("train", 4, 0, True), ("val", 2, 50, True), ("pool", 5, 80, False)):
        version = demo_import_start(user=user, project=project, name=name, count=count, seed=1, start=start, gt=gt)
        import_execute(version.task_id)
        versions.append(DatasetVersion.objects.get(pk=version.pk))
    return versions


def _small_loop(name: str, **extra) -> tuple[Iteration, DatasetVersion, DatasetVersion, DatasetVersion]:
    """A loop on three tiny sets with a stand-in initial model (nothing trains): round 1 is open."""
    user = UserFactory()
    project = ProjectFactory(owner=user)
    train, val, pool = _small_loop_sets(user, project)
    image = detector_register() or pytest.skip("no detector folder")
    iteration = loop.iteration_create(
        user=user,
        project=project,
        name=name,
        train_version=train,
        pool_version=pool,
        val_version=val,
        training_image=image,
        mining_image=image,
        class_names=["brick_2x2"],
        initial_stage=_fake_stage(project),
        **extra,
    )
    return iteration, train, val, pool


@pytest.mark.django_db
def test_the_api_and_the_pages_run_steps_once_and_say_what_is_missing(workspace):
    from tests.conftest import api_as, logged_in

    user = UserFactory()
    project = ProjectFactory(owner=user)
    train, val, pool = _small_loop_sets(user, project)
    image = detector_register() or pytest.skip("no detector folder")
    api = api_as(user)
    missing = api.post(f"/api/v1/projects/{project.pk}/iterations", {"train_version_id": train.pk})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_setting"
    assert "validation set" in missing.json()["error"]["details"]["missing"]
    page = logged_in(user).get(f"/projects/{project.pk}/iterations/new").content.decode()
    assert 'id="missing"' in page and "disabled" in page
    stage = _fake_stage(project)
    created = api.post(
        f"/api/v1/projects/{project.pk}/iterations",
        {
            "train_version_id": train.pk,
            "pool_version_id": pool.pk,
            "val_version_id": val.pk,
            "training_image_id": image.pk,
            "mining_image_id": image.pk,
            "class_names": ["brick_2x2"],
            "initial_stage_id": stage.pk,
            "top_k": 2,
        },
    )
    assert created.status_code == 201, created.content
    body = created.json()
    round_id = body["rounds"][0]["id"]
    assert body["rounds"][0]["steps"]["prepare"] == "todo"
    assert api_as(UserFactory()).get(f"/api/v1/iterations/{body['id']}").status_code == 404
    # two tabs press "Start" on the same step: one starts it, the other is told
    first, second = logged_in(user), logged_in(user)
    url = f"/iterations/{body['id']}/rounds/{round_id}/prepare"
    assert first.post(url, {"action": "start"}).status_code == 302
    answer = second.post(url, {"action": "start"}, follow=True).content.decode()
    assert "already started" in answer
    assert Task.objects.filter(kind="exclude", project=project).count() == 1
    again = api.post(f"/api/v1/iterations/{body['id']}/rounds/{round_id}/steps/prepare", {"action": "start"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "step_started"
    fixed = api.patch(f"/api/v1/iterations/{body['id']}", {"val_version_id": train.pk})
    assert fixed.status_code == 409 and fixed.json()["error"]["code"] == "val_fixed"
    assert api.patch(f"/api/v1/iterations/{body['id']}", {"top_k": 3}).json()["top_k"] == 3
    detail = logged_in(user).get(f"/iterations/{body['id']}/").content.decode()
    assert "Prepare mining data" in detail and "chart-map-trend" in detail


@pytest.mark.django_db(transaction=True)
def test_a_labelling_cancelled_midway_merges_what_was_labelled(label_studio, live_server, workspace):
    from datasets.labelling import labelling_cancel, labelling_push
    from tests.test_labelling import region

    iteration, train, _val, pool = _small_loop("ls")
    user = iteration.user
    r1 = iteration.rounds.get()
    Round.objects.filter(pk=r1.pk).update(skipped=["prepare"], picked=pool)  # as if mined: the whole pool
    loop.step_start(user=user, round_id=r1.pk, step="label", options={"base_url": live_server.url})
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.labelling is not None and loop.step_states(r1)["label"] == "running"
    assert labelling_push(r1.labelling.pk) == "sent"
    sent = Round.objects.get(pk=r1.pk).labelling
    assert sent is not None and sent.ls_project_id is not None
    first = next(iter(label_studio.tasks(sent.ls_project_id)))
    label_studio.annotation_create(first["id"], [region("brick_2x2", 10, 10, 20, 20)])
    labelling_cancel(r1.labelling)
    assert loop.step_states(Round.objects.get(pk=r1.pk))["label"] == "error"  # cancelled: merge what was done
    loop.step_start(user=user, round_id=r1.pk, step="merge")
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.labelled is not None and r1.labelled.asset_count == 1 and r1.labelled.gt_box_count == 1
    assert r1.merged is not None
    assert set(r1.merged.parents.values_list("id", flat=True)) == {train.pk, r1.labelled.pk}


@pytest.mark.django_db
def test_a_chunk_of_the_prepared_pool_is_mined_each_round(workspace):
    from datasets.services import operation_run

    iteration, _train, _val, _pool = _small_loop("chunks", chunk_size=2)
    user = iteration.user
    r1 = iteration.rounds.get()
    loop.step_start(user=user, round_id=r1.pk, step="prepare")
    excluded = Round.objects.get(pk=r1.pk).prepared
    assert excluded is not None and excluded.task_id is not None
    operation_run(excluded.task_id)
    loop.iteration_advance(iteration.pk)
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.prepared is not None and r1.prepared.pk != excluded.pk  # the chunk, sampled from the prepared pool
    assert loop.step_states(r1)["prepare"] == "running" and not loop.can_start(r1, "mine")[0]
    assert r1.prepared.task_id is not None
    operation_run(r1.prepared.task_id)
    r1 = Round.objects.get(pk=r1.pk)
    loop.iteration_advance(iteration.pk)
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.prepared is not None and r1.prepared.asset_count == 2
    assert loop.step_states(r1)["prepare"] == "done" and loop.can_start(r1, "mine")[0]


@pytest.mark.django_db
def test_the_mine_steps_rare_class_and_near_duplicate_options_reach_the_mining_run(workspace):
    """Set for the loop, prefilled in the mine step, changed there (an unticked box turns one off), carried to the
    mining run's parameters, and kept as the round's choice for the next round's prefill."""
    from datasets.services import operation_run
    from tests.conftest import api_as, logged_in

    iteration, _train, _val, _pool = _small_loop("options", class_balance=True, diversity=True)
    user = iteration.user
    r1 = iteration.rounds.get()
    assert loop.prefill(r1)["class_balance"] and loop.prefill(r1)["diversity"]
    body = api_as(user).get(f"/api/v1/iterations/{iteration.pk}").json()
    assert body["class_balance"] is True and body["diversity"] is True
    refused = api_as(user).patch(f"/api/v1/iterations/{iteration.pk}", {"diversity": None})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_setting"
    assert Iteration.objects.get(pk=iteration.pk).diversity is True
    loop.step_start(user=user, round_id=r1.pk, step="prepare")
    prepared = Round.objects.get(pk=r1.pk).prepared
    assert prepared is not None and prepared.task_id is not None
    operation_run(prepared.task_id)
    loop.iteration_advance(iteration.pk)
    page = logged_in(user).get(f"/iterations/{iteration.pk}/").content.decode()
    assert 'name="class_balance" value="1" checked' in page and 'name="diversity" value="1" checked' in page
    answer = logged_in(user).post(
        f"/iterations/{iteration.pk}/rounds/{r1.pk}/mine",
        {"action": "start", "top_k": "2", "mine_options": "1", "class_balance": "1"},  # diversity unticked
    )
    assert answer.status_code == 302
    r1 = Round.objects.get(pk=r1.pk)
    assert r1.pick_task is not None
    assert r1.pick_task.parameters["class_balance"] is True and r1.pick_task.parameters["diversity"] is False
    assert r1.settings["class_balance"] is True and r1.settings["diversity"] is False
    # the next round starts from this round's choice, not from the loop's settings
    r2 = Round.objects.create(iteration=iteration, number=2, arm=Round.Arm.MINED, base_train=_train)
    assert loop.prefill(r2)["class_balance"] is True and loop.prefill(r2)["diversity"] is False
