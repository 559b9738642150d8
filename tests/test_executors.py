"""The executor contract through both runners, on real parts: podman's Docker API and bubblewrap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from datasets.models import Asset, Box, DatasetVersion, PredictionSet
from datasets.store import asset_path
from models_app import jobs
from models_app.landing import model_dir
from models_app.models import ModelVersion, Task
from models_app.taskdir import task_dir
from tests.executors_util import contract_executor, sdk_executor, small_datasets, until

pytestmark = pytest.mark.django_db
RUNNERS = ["docker", "local"]


@pytest.fixture
def setup(trainer, workspace, tmp_path):
    project, train, val = small_datasets(trainer, tmp_path)
    return {"user": trainer, "project": project, "train": train, "val": val}


def _training(setup, image, **config):
    return jobs.job_submit(
        user=setup["user"],
        project=setup["project"],
        image=image,
        task_type="training",
        class_names=["a", "b"],
        train=setup["train"],
        val=setup["val"],
        user_config=config,
    )


def _launch(task: Task) -> Task:
    assert jobs.launch(task.pk) == "launched"
    task.refresh_from_db()
    assert task.state == "running" and task.run_ref
    return task


def _run_to_end(task: Task, timeout: float = 60) -> Task:
    until(lambda: not jobs.follow(task.pk), timeout, "the run to end")
    task.refresh_from_db()
    return task


def _release(task: Task) -> None:
    (task_dir(task.pk) / "out" / "release").write_text("go")


@pytest.mark.parametrize("runner", RUNNERS)
def test_training_run_sees_the_contract_and_lands_its_stages(setup, runner):
    image = contract_executor(runner, setup["user"])
    task = _launch(_training(setup, image, epochs=5, mode="hang"))
    out = task_dir(task.pk) / "out"
    until(lambda: (out / "monitor.txt").exists(), what="the first progress report")
    assert jobs.follow(task.pk) is True
    task.refresh_from_db()
    assert task.state == "running" and task.percent == pytest.approx(0.5)

    probe = dict(line.split("=", 1) for line in (out / "probe.txt").read_text().split("\n") if "=" in line)
    assert probe["in"] == "read-only" and probe["net"] == "no" and probe["env_ok"] == "yes"
    assert probe["img_man"] == "yes" and probe["uid"] != "0"
    mounts = {
        line.split()[1]: line.split()[2]
        for line in (out / "probe.txt").read_text().splitlines()
        if line.startswith("mount ")
    }
    assert mounts["/in"].startswith("ro") and mounts["/out"].startswith("rw")

    env = yaml.safe_load((out / "seen" / "env.yaml").read_text())
    assert env["run_training"] is True and env["run_mining"] is False and env["task_id"] == f"t{task.pk}"
    assert env["input"]["training_index_file"] == "/in/train-index.tsv"
    assert env["output"]["training_result_file"] == "/out/models/result.yaml"
    config = yaml.safe_load((out / "seen" / "config.yaml").read_text())
    assert config["epochs"] == 5 and config["learning_rate"] == 0.01  # user value over template default
    assert config["task_id"] == f"t{task.pk}"  # a reserved key wins over the template
    assert config["class_names"] == ["a", "b"] and config["gpu_count"] == 0 and config["object_type"] == 2
    assert config["pretrained_model_params"] == []

    lines = (out / "seen" / "train-index.tsv").read_text().splitlines()
    assert len(lines) == 4
    image_path, annotation_path = lines[0].split("\t")
    sha1 = Path(image_path).stem
    assert image_path == f"/in/assets/{sha1[:2]}/{sha1}.jpg"
    assert annotation_path == f"/in/annotations/{sha1[:2]}/{sha1}.txt"
    linked = task_dir(task.pk) / "in" / "assets" / sha1[:2] / f"{sha1}.jpg"
    assert os.stat(linked).st_ino == os.stat(asset_path(sha1)).st_ino  # no bytes copied
    ark = (task_dir(task.pk) / "in" / "annotations" / sha1[:2] / f"{sha1}.txt").read_text().splitlines()
    assert ark == ["0, 1, 1, 9, 9", "1, 2, 3, 20, 30"]
    assert len((out / "seen" / "val-index.tsv").read_text().splitlines()) == 2

    _release(task)
    task = _run_to_end(task)
    assert task.state == "done", (task.error_code, task.error_message, task.log_tail)
    stages = task.result["training"]["stages"]
    assert task.result["training"]["best_stage"] == "best"
    assert stages["best"]["files"] == ["best/model.bin"]  # /etc/passwd (outside /out) ignored
    assert stages["epoch1"]["mAP"] == 0.25
    assert "executor done" in (out / "ymir-executor-out.log").read_text()
    assert task.config["epochs"] == 5 and task.percent == 1.0

    version = ModelVersion.objects.get(pk=task.result["landed"]["model_version"])
    assert version.task == task and version.train_version == setup["train"] and version.val_version == setup["val"]
    assert version.recommended_stage == "best" and version.class_names == ["a", "b"] and version.number == 1
    landed = {stage.name: stage for stage in version.stages.all()}
    assert landed["best"].files == ["best/model.bin"] and landed["epoch1"].reported_map == 0.25
    stored = model_dir(version.pk) / "best" / "model.bin"
    assert os.stat(stored).st_ino == os.stat(out / "models" / "best" / "model.bin").st_ino


@pytest.mark.parametrize("runner", RUNNERS)
def test_mining_and_inference_in_one_run(setup, runner, tmp_path):
    image = contract_executor(runner, setup["user"])
    model = tmp_path / "model"
    (model / "best").mkdir(parents=True)
    (model / "best" / "w.bin").write_text("w")
    task = jobs.job_submit(
        user=setup["user"],
        project=setup["project"],
        image=image,
        task_type="mining",
        class_names=["a"],
        candidates=setup["train"],
        models_from=model,
        also_infer=True,
        top_k=2,
        output_name="hard ones",
    )
    task = _run_to_end(_launch(task))
    assert task.state == "done", (task.error_code, task.error_message, task.log_tail)
    shas = set(
        Asset.objects.filter(pk__in=setup["train"].items.values_list("asset_id", flat=True)).values_list(
            "sha1", flat=True
        )
    )
    mined = task.result["mining"]
    assert mined["count"] == 4 and {s for s, _ in mined["top"]} == shas  # /etc/passwd line ignored
    assert [v for _, v in mined["top"]] == sorted((v for _, v in mined["top"]), reverse=True)
    assert task.result["infer"] == {"images": 4, "boxes": 4}

    # the two best-scored images land as a new dataset, with their ground truth and the predictions
    version = DatasetVersion.objects.get(pk=task.result["landed"]["dataset_version"])
    assert version.group.name == "hard ones" and version.state == "ready" and version.group.project == setup["project"]
    assert list(version.parents.all()) == [setup["train"]]
    best = {s for s, _ in mined["top"][:2]}
    items = list(version.items.select_related("asset"))
    assert {i.asset.sha1 for i in items} == best and version.asset_count == 2
    assert {i.tags["mining_score"] for i in items} == {v for _, v in mined["top"][:2]}
    assert version.gt_box_count == 4  # two boxes per image came along
    pset = version.prediction_sets.get()
    assert pset.source == "model" and version.pred_box_count == 2
    assert set(Box.objects.filter(prediction_set=pset).values_list("label__name", "x1", "y1", "x2", "y2")) == {
        ("a", 1.0, 2.0, 11.0, 7.0)
    }
    config = yaml.safe_load((task_dir(task.pk) / "in" / "config.yaml").read_text())
    assert config["model_params_path"] == ["/in/models/best/w.bin"]
    assert config["run_mining"] is True and config["run_infer"] is True


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [("crash", "executor_exit", "something went wrong"), ("garbage", "bad_output", "")],
)
def test_failing_executors_end_in_error_with_a_message(setup, runner, mode, code, words):
    image = contract_executor(runner, setup["user"])
    task = _run_to_end(_launch(_training(setup, image, mode=mode)))
    assert task.state == "error" and task.error_code == code
    assert task.error_message
    assert words in task.log_tail


@pytest.mark.parametrize("runner", RUNNERS)
def test_cancel_stops_the_run(setup, runner):
    image = contract_executor(runner, setup["user"])
    task = _launch(_training(setup, image, mode="hang"))
    out = task_dir(task.pk) / "out"
    until(lambda: (out / "monitor.txt").exists(), what="the run to start")
    assert jobs.cancel(task) is True
    assert jobs.follow(task.pk) is False
    task.refresh_from_db()
    assert task.state == "terminated"
    if runner == "docker":
        from models_app.runners import DockerRunner

        assert DockerRunner()._get(task.run_ref) is None
    else:
        pid = int(task.run_ref.split(":")[0])
        until(
            lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3],
            what="the process to end",
        )
    assert jobs.follow(task.pk) is False  # a final state stays final


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_stops_the_run(setup, runner):
    image = contract_executor(runner, setup["user"])
    task = _training(setup, image, mode="hang")
    Task.objects.filter(pk=task.pk).update(timeout_seconds=1)
    task = _run_to_end(_launch(task), timeout=30)
    assert task.state == "error" and task.error_code == "timeout"


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_huge_log_is_cut_at_the_limit(setup, runner, settings):
    settings.YMIR_EXECUTOR_LOG_LIMIT = 2000
    image = contract_executor(runner, setup["user"])
    task = _run_to_end(_launch(_training(setup, image, mode="spam")))
    log = (task_dir(task.pk) / "out" / "ymir-executor-out.log").read_bytes()
    assert task.state == "done"
    assert len(log) < 2200 and b"log cut at 2000 bytes" in log


def test_a_redelivered_launch_adopts_the_container(setup):
    from models_app.runners import DockerRunner, labels_of

    image = contract_executor("docker", setup["user"])
    task = _launch(_training(setup, image, mode="hang"))
    first = task.run_ref
    Task.objects.filter(pk=task.pk).update(run_ref="", state="queued")  # as if the record was lost
    assert jobs.launch(task.pk) == "launched"
    task.refresh_from_db()
    assert task.run_ref == first
    runner = DockerRunner()
    labelled = runner.client.containers.list(all=True, filters={"label": f"ymir.task={task.pk}"})
    assert (
        len([c for c in labelled if c.labels.get("ymir.instance") == labels_of(jobs.spec_for(task))["ymir.instance"]])
        == 1
    )
    jobs.cancel(task)
    jobs.follow(task.pk)


def test_gpu_requests_and_shared_memory_are_built_for_the_engine(setup, tmp_path):
    from models_app.runners import RunSpec, container_options

    spec = RunSpec(task_id=7, in_dir=tmp_path, out_dir=tmp_path, reference="x/y:1", gpu_ids=["2", "5"])
    options = container_options(spec)
    request = options["device_requests"][0]
    assert request["DeviceIDs"] == ["2", "5"] and request["Capabilities"] == [["gpu"]]
    assert options["shm_size"] == "32G" and options["network_mode"] == "none"
    assert options["user"] != "0:0" and "command" not in options and options["name"].endswith("-7")
    cpu = container_options(RunSpec(task_id=8, in_dir=tmp_path, out_dir=tmp_path, reference="x/y:1", network=True))
    assert "device_requests" not in cpu and "network_mode" not in cpu and "shm_size" not in cpu


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_executor_written_with_ymirs_sdk_runs_unmodified(setup, runner, tmp_path):
    image = sdk_executor(runner, setup["user"])
    task = _run_to_end(_launch(_training(setup, image)))
    assert task.state == "done", (task.error_code, task.error_message, task.log_tail)
    assert task.result["training"]["stages"]["default"] == {"files": ["model.txt"], "mAP": 0.42, "timestamp": None}
    version = ModelVersion.objects.get(pk=task.result["landed"]["model_version"])
    stage = version.stages.get()
    assert (stage.name, stage.files, stage.reported_map) == ("default", ["model.txt"], 0.42)
    assert "trained on 4 images" in (model_dir(version.pk) / "model.txt").read_text()

    def run(task_type: str, **options) -> Task:
        task = jobs.job_submit(
            user=setup["user"],
            project=setup["project"],
            image=image,
            task_type=task_type,
            class_names=["a"],
            candidates=setup["val"],
            model_stage=stage,
            **options,
        )
        task = _run_to_end(_launch(task))
        assert task.state == "done", (task.error_code, task.error_message, task.log_tail)
        return task

    mining = run("mining", also_infer=True, top_k=1)
    assert mining.result["mining"]["count"] == 2 and mining.result["infer"] == {"images": 2, "boxes": 2}
    mined = DatasetVersion.objects.get(pk=mining.result["landed"]["dataset_version"])
    assert mined.asset_count == 1 and mined.pred_box_count == 1 and mined.prediction_sets.get().source == "model"

    inference = run("infer")
    pset = PredictionSet.objects.get(pk=inference.result["landed"]["prediction_set"])
    assert pset.version == setup["val"] and pset.name == f"{version} / default"
    assert Box.objects.filter(prediction_set=pset).count() == 2
    setup["val"].refresh_from_db()
    assert setup["val"].pred_box_count == 2


# --- images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["--privileged", "x;rm -rf /", "a b", "$(id)", "UPPER/case", "", "a/../b", "-v/:/host"]
)
def test_bad_image_references_are_refused(admin_user, reference):
    from core.errors import Invalid
    from models_app.executors import image_add
    from models_app.models import ExecutorImage

    with pytest.raises(Invalid):
        image_add(user=admin_user, name="bad", reference=reference)
    assert not ExecutorImage.objects.exists()


def test_only_admins_add_images(trainer):
    from core.errors import Forbidden
    from models_app.executors import image_add

    with pytest.raises(Forbidden):
        image_add(user=trainer, name="x", reference="registry.example:5000/team/det:1.0")


def test_adding_an_image_reads_its_templates_without_running_it(admin_user, workspace):
    from models_app.executors import image_add, image_inspect
    from models_app.models import ExecutorImage
    from tests.executors_util import built_images, engine_or_skip

    engine_or_skip()
    image = image_add(user=admin_user, name="contract", reference=built_images()["contract"])
    assert image_inspect(image.pk) == "ready"
    image.refresh_from_db()
    assert image.state == "ready" and image.task_types == ["training", "mining", "infer"]
    assert image.templates["training"]["epochs"] == 3 and image.manifest == {"object_type": 2}
    assert Task.objects.get(pk=image.conformance["pull_task"]).state == "done"

    missing = image_add(user=admin_user, name="missing", reference="localhost/ymir-test/absent:0")
    assert image_inspect(missing.pk) == "image_missing"
    missing.refresh_from_db()
    assert missing.state == "error" and "cannot be found" in missing.error_message
    assert ExecutorImage.objects.filter(state="ready").count() == 1


def test_manifests_and_templates_are_checked(tmp_path):
    from models_app.contract import ContractError, read_manifest

    with pytest.raises(ContractError, match=r"no /img-man/manifest\.yaml"):
        read_manifest({})
    with pytest.raises(ContractError, match="safe"):
        read_manifest(
            {"manifest.yaml": b"object_type: 2", "training-template.yaml": b"x: !!python/object:os.system {}"}
        )
    with pytest.raises(ContractError, match="object detection"):
        read_manifest({"manifest.yaml": b"object_type: 3", "training-template.yaml": b"x: 1"})
    with pytest.raises(ContractError, match="no training, mining or infer template"):
        read_manifest({"manifest.yaml": b"object_type: 2"})
    _manifest, templates = read_manifest(
        {"manifest.yaml": b"object_type: [2, 3]", "det/mining-template.yaml": b"top_k: 3", "infer-template.yaml": b""}
    )
    assert templates == {"mining": {"top_k": 3}, "infer": {}}


def test_user_config_cannot_set_reserved_keys_or_break_types(setup):
    from core.errors import Invalid
    from models_app.models import ExecutorImage

    image = ExecutorImage.objects.create(
        name="t", kind="local", state="ready", templates={"training": {"epochs": 3, "export_format": "ark:raw"}}
    )
    for bad in ({"class_names": ["x"]}, {"gpu_id": "0"}, {"epochs": "many"}, {"export_format": "yolo:raw"}):
        with pytest.raises(Invalid):
            _training(setup, image, **bad)
    assert not Task.objects.filter(image=image).exists()


def test_contract_readers_survive_nonsense(tmp_path):
    from models_app.contract import config_yaml, container_to_host, read_monitor, read_training_result

    monitor = tmp_path / "monitor.txt"
    for text in ("", "garbage", "t1\tnan\t0.5\t2", "t1\t1\tx\t2", "t1\t1\t0.5\t9", "\x00\xff"):
        monitor.write_text(text)
        assert read_monitor(monitor) is None
    monitor.write_text("t1\t10\t0.7\t4\t300102\tout of memory\ntraceback...")
    seen = read_monitor(monitor)
    assert seen is not None and seen.state == 4 and seen.error_code == "300102" and seen.percent == 0.7
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    for outside in ("/etc/passwd", "/out/../etc/passwd", "/in/x", "../../x"):
        assert container_to_host(outside, out) is None
    (out / "models" / "w.pt").write_text("w")
    (out / "models" / "result.yaml").write_text("model: [w.pt, /etc/shadow]\nmap: 0.3\n")
    assert read_training_result(out)["stages"]["default"]["files"] == ["w.pt"]
    assert config_yaml({"a": 1, "task_id": "t"}, {"a": 2, "task_id": "evil"}, {"task_id": "real"}) == {
        "a": 2,
        "task_id": "real",
    }


def test_a_models_datasets_are_kept_while_it_lives_and_go_with_the_project(setup, django_capture_on_commit_callbacks):
    from core.errors import Conflict
    from datasets.services import dataset_delete
    from projects.services import project_delete

    task = _run_to_end(_launch(_training(setup, contract_executor("local", setup["user"]))))
    version = ModelVersion.objects.get(pk=task.result["landed"]["model_version"])
    with pytest.raises(Conflict) as refused:
        dataset_delete(user=setup["user"], version=setup["train"])
    assert refused.value.code == "in_use"
    folder = model_dir(version.pk)
    assert folder.is_dir()
    # the platform's evaluation runs of the new model's stages are tasks of the project: deletion waits
    evaluations = Task.objects.filter(pk__in=task.result["landed"]["stage_evaluations"])
    assert evaluations.exists()
    with pytest.raises(Conflict):
        project_delete(project=setup["project"])
    for pending in evaluations:
        jobs.cancel(pending)
    with django_capture_on_commit_callbacks(execute=True):
        project_delete(project=setup["project"])
    assert not ModelVersion.objects.filter(pk=version.pk).exists() and not folder.exists()
