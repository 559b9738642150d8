"""The default detector executor (executors/): real training, mining and inference on CPU, through the
contract and the local runner; its bad inputs end in YMIR error codes."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml
from django.conf import settings

from datasets.demo import CLASSES
from datasets.models import DatasetVersion
from datasets.services import demo_classes_ensure, demo_import_start, import_execute
from datasets.store import asset_path
from iterations.services import STRATEGIES
from models_app import jobs
from models_app.executors import detector_register, image_add, image_inspect
from models_app.landing import model_dir
from models_app.models import ModelVersion, Task
from models_app.taskdir import task_dir
from tests.detector_util import detector_python, run_direct, task_folder
from tests.executors_util import engine_or_skip, until
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def _dataset(user, project, name: str, count: int, start: int, gt: bool = True) -> DatasetVersion:
    version = demo_import_start(user=user, project=project, name=name, count=count, seed=5, start=start, gt=gt)
    import_execute(version.task_id)
    version.refresh_from_db()
    assert version.state == "ready"
    return version


def _run(task: Task, timeout: float = 300) -> Task:
    assert jobs.launch(task.pk) == "launched"
    until(lambda: not jobs.follow(task.pk), timeout, f"{task} to end")
    task.refresh_from_db()
    assert task.state == "done", (task.error_code, task.error_message, task.log_tail[-2000:])
    return task


def test_the_detector_trains_mines_and_infers_through_the_contract(trainer, workspace):
    detector_python()
    image = detector_register()
    assert image is not None and image.task_types == ["training", "mining", "infer"]
    demo_classes_ensure(trainer)
    project = ProjectFactory(owner=trainer)
    train = _dataset(trainer, project, "train", 60, 0)
    val = _dataset(trainer, project, "val", 20, 60)
    pool = _dataset(trainer, project, "pool", 24, 80, gt=False)
    common = {"user": trainer, "project": project, "image": image, "class_names": list(CLASSES)}

    config = {"epochs": 12, "save_every_epochs": 6, "batch_size": 8, "image_size": 256}
    training = _run(jobs.job_submit(task_type="training", train=train, val=val, user_config=config, **common))
    out = task_dir(training.pk) / "out"
    result = yaml.safe_load((out / "models" / "result.yaml").read_text())
    assert set(result["model_stages"]) == {"epoch_6", "epoch_12", "best"} and result["best_stage_name"] == "best"
    assert (out / "monitor.txt").read_text().split("\t")[2:4] == ["1.0000", "3\n"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    version = ModelVersion.objects.get(pk=training.result["landed"]["model_version"])
    best = version.stages.get(name="best")
    assert best.files == ["best/model.pt", "best/model.onnx"]
    assert best.reported_map is not None and best.reported_map > 0  # mAP50 on the held-out validation images

    # the ONNX graph (decoding inside) and the PyTorch weights agree
    shas = list(val.items.values_list("asset__sha1", flat=True)[:4])
    agree = subprocess.run(
        [detector_python(), "-m", "ymir_detector.agree", str(model_dir(version.pk) / "best")]
        + [str(asset_path(s)) for s in shas],
        cwd=settings.YMIR_DETECTOR_FOLDER,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(agree.stdout)
    assert figures["detections"] > 0 and figures["class_mismatch"] == 0
    assert figures["score_diff"] < 1e-4 and figures["box_diff"] < 1e-2

    # mining ranks every candidate with each strategy; the top-k land with their pre-annotations
    ranked = {}
    for strategy in STRATEGIES:  # every strategy the platform offers
        mining = _run(
            jobs.job_submit(
                task_type="mining",
                candidates=pool,
                model_stage=best,
                top_k=8,
                also_infer=strategy == "aldd",
                user_config={"strategy": strategy},
                **common,
            )
        )
        assert mining.result["mining"]["count"] == 24, strategy
        ranked[strategy] = [sha for sha, _score in mining.result["mining"]["top"]]
        mined = DatasetVersion.objects.get(pk=mining.result["landed"]["dataset_version"])
        assert mined.asset_count == 8
        if strategy == "aldd":
            assert mined.prediction_sets.count() == 1 and mined.pred_box_count > 0
    assert len({tuple(order) for order in ranked.values()}) > 1  # the strategies do not all agree

    inference = _run(jobs.job_submit(task_type="infer", candidates=val, model_stage=best, **common))
    detections = json.loads((task_dir(inference.pk) / "out" / "infer-result.json").read_text())["detection"]
    assert len(detections) == 20 and inference.result["infer"]["images"] == 20
    for entry in detections.values():
        for box in entry["boxes"]:
            assert box["class_name"] in CLASSES and 0 <= box["score"] <= 1 and box["box"]["w"] > 0
    val.refresh_from_db()
    assert val.pred_box_count == inference.result["infer"]["boxes"] > 0


SHIFT_SCRIPT = """
import io, json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from ymir_detector.data import to_tensor
from ymir_detector.mine import better_rank, scores_for, shift_hooks
from ymir_detector.model import Detector
from datasets.demo import field_condition, make_image
from PIL import Image

def batch(indices, scene):
    arrays = [np.asarray(Image.open(io.BytesIO(make_image(5, i, 128, 128, scene)[0])).convert("RGB")) for i in indices]
    return to_tensor(np.stack(arrays))

torch.manual_seed(0)
model = Detector(8)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = None  # a plain average over the batches below: the statistics of a lab training set
model.train()
with torch.no_grad():
    for start in range(0, 48, 16):
        model(batch(range(start, start + 16), "lab"))
model.eval()
field = list(range(1000, 1200))
found, handles = shift_hooks(model)
with torch.no_grad():
    aldd, _ = scores_for("aldd", model, batch(field, "field"), 0.05)
shift = torch.stack(found).mean(dim=0).tolist()
for h in handles:
    h.remove()
combined = better_rank(aldd, shift)
conditions = [field_condition(5, i) for i in field]
top = [conditions[i] for i in np.argsort(combined)[::-1][:20]]
print(json.dumps({"top": top, "dim_share": conditions.count("dim") / len(conditions), "ranks": sorted(combined)[-3:]}))
"""


def _detector_json(script: str) -> Any:
    """Run ``script`` in the detector's Python with the executor package's folder as its argument; its JSON."""
    done = subprocess.run(
        [detector_python(), "-c", script, str(settings.YMIR_DETECTOR_FOLDER)],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_shift_score_ranks_images_unlike_the_training_set_first():
    """Batch-norm statistics of lab images; in a field pool, the dark frames are the most unfamiliar."""
    figures = _detector_json(SHIFT_SCRIPT)
    assert figures["top"].count("dim") >= 6, figures  # a random 20 holds about 2
    assert figures["dim_share"] < 0.2
    assert max(figures["ranks"]) == 1.0


MASS_SCRIPT = """
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
from ymir_detector.mine import scores_for

logit = lambda p: float(torch.logit(torch.tensor(p)))
heat = torch.full((3, 2, 8, 8), -12.0)
for y, x, c, p in [(1, 1, 0, 0.9), (4, 4, 1, 0.3), (6, 1, 0, 0.2), (3, 6, 1, 0.04)]:
    heat[0, c, y, x] = logit(p)  # one sure part, two half-seen, one under the threshold
heat[1, 0, 2, 2] = logit(0.95)  # only sure parts
for y in range(0, 8, 2):
    for x in range(0, 8, 2):
        heat[2, 0, y, x] = logit(0.25)  # a heap of half-seen parts
model = lambda images: (heat, torch.ones(3, 4, 8, 8))
values, _ = scores_for("mass", model, torch.zeros(3, 3, 64, 64), 0.05)
print(json.dumps(values))
"""


def test_the_uncertain_mass_sums_the_half_seen_detections():
    """shift_mass's second signal: the summed scores between the confidence threshold and 0.5."""
    half_seen, sure, heap = _detector_json(MASS_SCRIPT)
    assert abs(half_seen - 0.5) < 1e-4  # 0.3 + 0.2; neither 0.9 nor 0.04 counts
    assert sure == 0.0
    assert abs(heap - 16 * 0.25) < 1e-3


SPREAD_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from ymir_detector.mine import spread_order

# 30 images: 0-11 one kind (a tight cluster, the best ranks), 12-17 a second kind, 18-29 a third, ranked lowest
rng = np.random.default_rng(0)
centres = np.eye(3)
kinds = [0] * 12 + [1] * 6 + [2] * 12
vectors = np.stack([centres[k] + 0.05 * rng.normal(size=3) for k in kinds])
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
ranks = [1.0 - i / 29 for i in range(30)]
scores = spread_order(ranks, vectors, share=0.6)
order = list(np.argsort(scores, kind="stable")[::-1])
print(json.dumps({"first2": [kinds[i] for i in order[:2]], "top": [int(i) for i in order[:18]],
                  "rest": [scores[i] for i in order[18:]], "scores": scores}))
"""


def test_spread_puts_the_best_of_every_kind_first_and_keeps_the_rest_in_rank_order():
    """``spread``: candidates (the top share by rank) ordered by rank x distance to those before them."""
    figures = _detector_json(SPREAD_SCRIPT)
    assert figures["top"][0] == 0  # the best rank opens
    assert figures["first2"] == [0, 1], figures  # then the best of the other kind, not the second best overall
    assert set(figures["top"]) == set(range(18))  # the candidates (top 60%) before every other image
    assert figures["rest"] == sorted(figures["rest"], reverse=True) and max(figures["rest"]) <= 1.0
    assert min(figures["scores"][i] for i in range(18)) > 1.0


def _nan_checkpoint(tmp_path) -> str:
    """A checkpoint of this executor whose weights are NaN (a diverged run given as pretrained weights)."""
    script = (
        "import sys, torch\n"
        "from ymir_detector.model import Detector\n"
        "from ymir_detector.train import checkpoint\n"
        "m = Detector(8)\n"
        "for p in m.parameters(): p.data.fill_(float('nan'))\n"
        "torch.save(checkpoint(m, [], {'image_size': 128, 'model_size': 's'}), sys.argv[1])\n"
    )
    path = tmp_path / "nan.pt"
    subprocess.run([detector_python(), "-c", script, str(path)], cwd=settings.YMIR_DETECTOR_FOLDER, check=True)
    return str(path)


OLD_CHECKPOINT = """
import json, sys, torch
from ymir_detector.model import Detector
torch.manual_seed(0)
model = Detector(8, "s", "full")
if sys.argv[1] == "write":  # as saved before the separable head existed: no model_head key
    torch.save({"state_dict": model.state_dict(), "class_names": [f"c{i}" for i in range(8)], "image_size": 128,
                "model_size": "s", "format": "ymir-detector/1"}, sys.argv[2])
else:
    saved = torch.load(sys.argv[2], weights_only=True)
    print(json.dumps({"head": saved.get("model_head")}))
"""


def test_a_model_saved_before_the_separable_head_still_trains_on_and_mines(tmp_path):
    """Checkpoints name their head since the separable one became the default; one that names none is the
    full-convolution network it was trained as: it loads for mining and as pretrained weights, and the model
    trained from it keeps that head."""
    python = detector_python()
    root = task_folder(tmp_path, train=4, val=3)
    old = tmp_path / "old.pt"
    folder = settings.YMIR_DETECTOR_FOLDER
    subprocess.run([python, "-c", OLD_CHECKPOINT, "write", str(old)], cwd=folder, check=True)

    exit_code, _monitor, log = run_direct(root, "mining", {"strategy": "aldd", "model_params_path": [str(old)]})
    assert exit_code == 0, log[-2000:]
    assert len((root / "out" / "result.tsv").read_text().splitlines()) == 3

    config = {"epochs": 1, "image_size": 128, "batch_size": 2, "pretrained_model_params": [str(old)]}
    exit_code, _monitor, log = run_direct(root, "training", config)
    assert exit_code == 0, log[-2000:]
    trained = root / "out" / "models" / "best" / "model.pt"
    read = subprocess.run([python, "-c", OLD_CHECKPOINT, "read", str(trained)], cwd=folder, capture_output=True)
    assert json.loads(read.stdout)["head"] == "full"

    fresh = tmp_path / "fresh"
    task_folder(fresh, train=4, val=3)
    exit_code, _monitor, log = run_direct(fresh, "training", {k: v for k, v in config.items() if "pretrained" not in k})
    assert exit_code == 0, log[-2000:]
    fresh_model = fresh / "out" / "models" / "best" / "model.pt"
    read = subprocess.run([python, "-c", OLD_CHECKPOINT, "read", str(fresh_model)], cwd=folder, capture_output=True)
    assert json.loads(read.stdout)["head"] == "separable"


def test_distributed_data_parallel_trains_with_two_processes(tmp_path):
    """The multi-GPU path (one process per GPU, all-reduced gradients) on the gloo backend, two CPU processes:
    an odd number of images still gives each process the same number of steps (else the all-reduce would wait
    forever), and only the first process writes stages."""
    detector_python()
    root = task_folder(tmp_path, train=7, val=4)  # 4 + 3 images: 2 and 1 batches of 2, were it split as is
    config = {"epochs": 2, "image_size": 128, "batch_size": 2, "save_every_epochs": 1, "model_size": "s"}
    exit_code, monitor, log = run_direct(
        root, "training", config, {"YMIR_DETECTOR_CPU_PROCESSES": "2", "OMP_NUM_THREADS": "1"}
    )
    assert exit_code == 0, log[-3000:]
    assert "distributed data parallel: 2 processes" in log
    assert monitor.rstrip("\n").split("\t")[2:4] == ["1.0000", "3"], monitor
    result = yaml.safe_load((root / "out" / "models" / "result.yaml").read_text())
    assert {s["stage_name"] for s in result["model_stages"].values()} >= {"epoch_1", "epoch_2", "best"}
    for stage in ("epoch_1", "epoch_2", "best"):
        assert (root / "out" / "models" / stage / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize(
    ("case", "task", "code"),
    [
        ("no training images", "training", "300004"),
        ("no boxes of the classes", "training", "300004"),
        ("unknown class index", "training", "300002"),
        ("bad hyper-parameter", "training", "300001"),
        ("NaN loss", "training", "300201"),
        ("unknown strategy", "mining", "300001"),
        ("no model", "infer", "300003"),
    ],
)
def test_bad_input_ends_in_a_ymir_error_code(tmp_path, case, task, code):
    detector_python()
    root = task_folder(tmp_path, train=4, val=2, empty_annotations=case == "no boxes of the classes")
    config: dict = {"epochs": 1, "image_size": 128, "batch_size": 2}
    if case == "no training images":
        (root / "in" / "train-index.tsv").write_text("")
    if case == "unknown class index":
        (root / "in" / "annotations" / "0.txt").write_text("42, 1, 1, 20, 20\n")
    if case == "bad hyper-parameter":
        config["image_size"] = 100  # not a multiple of 32
    if case == "NaN loss":
        config["pretrained_model_params"] = [_nan_checkpoint(tmp_path)]
    if case == "unknown strategy":
        config = {"strategy": "psychic", "model_params_path": []}
    if case == "no model":
        config = {"model_params_path": ["/nowhere/model.onnx"]}
    exit_code, monitor, log = run_direct(root, task, config)
    fields = monitor.rstrip("\n").split("\t")
    assert exit_code != 0 and fields[3] == "4" and fields[4] == code, (case, monitor, log[-2000:])
    assert len(fields) == 6 and fields[5]  # a message


def test_the_cpu_image_builds_offline_and_trains_mines_and_infers_in_a_container(admin_user, trainer, workspace):
    """executors/Dockerfile.cpu, built as build-offline.sh builds it where no registry is reachable (a Debian
    base from debootstrap, wheels lent to a build with no network), added by an admin like any image and run by
    the Docker runner (podman here): training, mining and inference end done."""
    engine_or_skip()
    tag = "localhost/ymir-test/detector:cpu"
    built = subprocess.run(
        ["bash", str(settings.BASE_DIR / "executors" / "build-offline.sh"), tag],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0 and built.stdout.strip() == tag, built.stderr[-3000:]
    image = image_add(user=admin_user, name="detector-cpu", reference=tag)
    assert image_inspect(image.pk) == "ready"
    image.refresh_from_db()
    assert image.task_types == ["training", "mining", "infer"] and image.kind == "docker"

    demo_classes_ensure(trainer)
    project = ProjectFactory(owner=trainer)
    train, val = _dataset(trainer, project, "train", 16, 0), _dataset(trainer, project, "val", 6, 16)
    common = {"user": trainer, "project": project, "image": image, "class_names": list(CLASSES)}
    config = {"epochs": 2, "save_every_epochs": 2, "batch_size": 4, "image_size": 128}
    training = _run(jobs.job_submit(task_type="training", train=train, val=val, user_config=config, **common))
    version = ModelVersion.objects.get(pk=training.result["landed"]["model_version"])
    best = version.stages.get(name="best")
    assert best.files == ["best/model.pt", "best/model.onnx"]
    mining = _run(jobs.job_submit(task_type="mining", candidates=val, model_stage=best, top_k=3, **common))
    assert mining.result["mining"]["count"] == 6
    inference = _run(jobs.job_submit(task_type="infer", candidates=val, model_stage=best, **common))
    assert inference.result["infer"]["images"] == 6
