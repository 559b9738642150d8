"""Stored evaluations: from the database through our evaluator (checked against pycocotools on the same
boxes), TP/FP/FN/MTP tags that add up, model-vs-model confidence intervals, the API and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from datasets import classes
from datasets.models import Box, PredictionSet
from models_app.evaluations import box_outcomes, evaluation_create
from models_app.evaluator import Boxes
from models_app.models import Evaluation, Task
from tests.coco_reference import reference
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip
from tests.factories import ProjectFactory, UserFactory

W, H = 200, 150
CLASSES = ("cat", "dog", "bird")


def _voc(filename: str, boxes: list[tuple[str, float, float, float, float, float | None]]) -> bytes:
    body = "".join(
        f"<object><name>{n}</name>{'' if s is None else f'<score>{s}</score>'}"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d, s in boxes
    )
    return f"<annotation><filename>{filename}</filename>{body}</annotation>".encode()


def synthetic(user, tmp_path, *, images: int = 25, seed: int = 0, ghost: bool = True):
    """A dataset with ground truth and an imported prediction set (jittered copies plus random boxes, and one
    prediction of a class the ground truth never has); answers (version, gt rows, pred rows) in image order."""
    rng = np.random.default_rng(seed)
    for name in (*CLASSES, "ghost"):
        if not classes.resolve_keywords([name]):
            classes.class_create(user=user, name=name)
    project = ProjectFactory(owner=user)
    files, gt_rows, pred_rows = {}, [], []
    for i in range(images):
        gts, preds = [], []
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, W - 40), rng.uniform(0, H - 40)
            w, h = rng.uniform(5, 40), rng.uniform(5, 40)
            gts.append((CLASSES[int(rng.integers(0, 3))], round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)))
        for name, a, b, c, d in gts:
            if rng.random() < 0.8:
                j = rng.normal(0, 2, 4)
                box = (
                    max(0.0, round(a + j[0], 1)),
                    max(0.0, round(b + j[1], 1)),
                    round(c + j[2], 1),
                    round(d + j[3], 1),
                )
                if box[2] > box[0] and box[3] > box[1]:
                    label = name if rng.random() < 0.85 else CLASSES[int(rng.integers(0, 3))]
                    preds.append((label, *box, round(float(rng.random()), 4)))
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, W - 30), rng.uniform(0, H - 30)
            box = (round(x, 1), round(y, 1), round(x + 20, 1), round(y + 25, 1))
            preds.append((CLASSES[int(rng.integers(0, 3))], *box, round(float(rng.random()), 4)))
        if ghost and i == 0:
            preds.append(("ghost", 1, 1, 30, 30, 0.99))
        files[f"images/im{i:03d}.jpg"] = jpeg(W, H, colour=(i * 9 % 255, 40, 90))
        files[f"gt/im{i:03d}.xml"] = _voc(f"im{i:03d}.jpg", [(*g, None) for g in gts])
        files[f"pred/im{i:03d}.xml"] = _voc(f"im{i:03d}.jpg", preds)
        gt_rows += [(i, *g) for g in gts]
        pred_rows += [(i, *p) for p in preds]
    version = import_now(user, project, name=f"eval{seed}", upload=make_zip(tmp_path / f"e{seed}.zip", files))
    assert version.state == "ready", version.report
    return version, gt_rows, pred_rows


def _reference_stats(gt_rows, pred_rows, images: int, score_threshold: float = 0.0):
    index = {name: k for k, name in enumerate(CLASSES)}
    gt = Boxes(
        [r[0] for r in gt_rows],
        [index[r[1]] for r in gt_rows],
        np.array([[r[2], r[3], r[4] - r[2], r[5] - r[3]] for r in gt_rows]).reshape(-1, 4),
    )
    kept = [r for r in pred_rows if r[1] in index and r[6] >= score_threshold]
    dt = Boxes(
        [r[0] for r in kept],
        [index[r[1]] for r in kept],
        np.array([[r[2], r[3], r[4] - r[2], r[5] - r[3]] for r in kept]).reshape(-1, 4),
        [r[6] for r in kept],
    )
    present = sorted({index[r[1]] for r in gt_rows})
    assert present == [0, 1, 2]
    return reference(gt, dt, images, 3).stats


@pytest.mark.django_db
def test_an_evaluation_reads_the_database_and_matches_pycocotools(tmp_path, workspace):
    user = UserFactory()
    version, gt_rows, pred_rows = synthetic(user, tmp_path)
    pset = PredictionSet.objects.get(version=version)
    evaluation = evaluation_create(user=user, version=version, prediction_sets=[pset], run_now=True)
    result = evaluation.result
    assert evaluation.task is not None and evaluation.task.state == Task.State.DONE
    ours = result["sets"][0]["stats"]
    expected = _reference_stats(gt_rows, pred_rows, 25)
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100"]
    for name, value in zip(names, expected, strict=False):
        assert (ours[name] if ours[name] is not None else -1) == pytest.approx(value, abs=1e-6), name
    assert result["sets"][0]["ignored_unknown_class"] == 1  # the ghost prediction
    assert result["classes"] == sorted(CLASSES)
    # per class, counts add up: TP + FN = ground truth, and the confusion matrix holds every box once
    rows = result["sets"][0]["per_class"]
    for row in rows:
        assert row["tp"] + row["fn"] == row["gt"]
    confusion = np.array(result["sets"][0]["confusion"])
    assert confusion[:3, 3].sum() == sum(r["fn"] for r in rows)
    assert np.trace(confusion[:3, :3]) >= sum(r["tp"] for r in rows)
    assert confusion[:, :3].sum() == sum(r["tp"] + r["fp"] for r in rows)


@pytest.mark.django_db
def test_a_score_threshold_filters_predictions_as_pycocotools_would(tmp_path, workspace):
    user = UserFactory()
    version, gt_rows, pred_rows = synthetic(user, tmp_path, seed=1)
    pset = PredictionSet.objects.get(version=version)
    evaluation = evaluation_create(
        user=user, version=version, prediction_sets=[pset], score_threshold=0.5, ious=0.5, run_now=True
    )
    assert evaluation.parameters["ious"] == [0.5]
    # at a single threshold of 0.5, AP equals AP50 of the COCO run on the filtered predictions
    expected = _reference_stats(gt_rows, pred_rows, 25, score_threshold=0.5)
    assert evaluation.result["sets"][0]["stats"]["AP"] == pytest.approx(expected[1], abs=1e-6)


@pytest.mark.django_db
def test_tp_fp_fn_mtp_tags_add_up(tmp_path, workspace):
    user = UserFactory()
    version, _gt, _pred = synthetic(user, tmp_path, seed=2)
    pset = PredictionSet.objects.get(version=version)
    tags = box_outcomes(version, pset, iou=0.5, score_threshold=0.3)
    counts = {k: list(tags.values()).count(k) for k in ("TP", "FP", "FN", "MTP")}
    assert counts["TP"] == counts["MTP"] > 0
    above = Box.objects.filter(prediction_set=pset, score__gte=0.3).exclude(label__name="ghost").count()
    assert counts["TP"] + counts["FP"] == above
    assert counts["MTP"] + counts["FN"] == version.gt_box_count
    ghost = Box.objects.get(prediction_set=pset, label__name="ghost")
    assert ghost.pk not in tags  # a class the ground truth does not have is left out


@pytest.mark.django_db
def test_two_models_side_by_side_with_a_bootstrap_interval(tmp_path, workspace):
    user = UserFactory()
    version, _gt, _pred = synthetic(user, tmp_path, images=40, seed=3)
    good = PredictionSet.objects.get(version=version)
    # a worse model: the same boxes, most shifted off their objects
    worse = PredictionSet.objects.create(version=version, source=PredictionSet.Source.MODEL, name="worse")
    shifted = []
    for i, box in enumerate(Box.objects.filter(prediction_set=good).order_by("id")):
        dx = 25 if i % 3 else 0
        shifted.append(
            Box(
                version=version,
                asset_id=box.asset_id,
                label_id=box.label_id,
                prediction_set=worse,
                x1=box.x1 + dx,
                y1=box.y1,
                x2=box.x2 + dx,
                y2=box.y2,
                score=box.score,
            )
        )
    Box.objects.bulk_create(shifted)
    evaluation = evaluation_create(user=user, version=version, prediction_sets=[good, worse], run_now=True)
    result = evaluation.result
    best = [s for s in result["sets"] if s["best"]]
    assert [s["id"] for s in best] == [good.pk]
    (comparison,) = result["comparison"]
    assert comparison["set"] == worse.pk and comparison["diff"] < 0
    assert comparison["low"] <= comparison["diff"] <= comparison["high"] < 0 and comparison["significant"]


@pytest.mark.django_db
def test_the_evaluation_api_answers_metrics_and_refuses_bad_input(tmp_path, workspace):
    user = UserFactory()
    version, _gt, _pred = synthetic(user, tmp_path, seed=4)
    pset = PredictionSet.objects.get(version=version)
    api = api_as(user)
    response = api.post(
        "/api/v1/evaluations",
        {"version_id": version.pk, "prediction_set_ids": [pset.pk], "ious": "0.5:0.95", "score_threshold": 0.0},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "done" and 0 < body["result"]["sets"][0]["stats"]["AP50"] <= 1
    assert api.get(f"/api/v1/evaluations/{body['id']}").json()["result"] == body["result"]

    other_version, _g, _p = synthetic(user, tmp_path, seed=5, ghost=False)
    other_set = PredictionSet.objects.get(version=other_version)
    bad: list[tuple[dict[str, object], str]] = [
        ({"prediction_set_ids": [other_set.pk]}, "invalid_prediction_set"),
        ({"ious": "abc"}, "invalid_iou"),
        ({"ious": "1.5"}, "invalid_iou"),
        ({"score_threshold": 2}, "invalid_score_threshold"),
        ({"max_dets": [10, 1, 100]}, "invalid_max_dets"),
        ({"prediction_set_ids": []}, "no_predictions"),
    ]
    for change, code in bad:
        payload: dict[str, object] = {"version_id": version.pk, "prediction_set_ids": [pset.pk]}
        payload.update(change)
        response = api.post("/api/v1/evaluations", payload)
        assert response.status_code == 422 and response.json()["error"]["code"] == code, (change, response.content)
    assert Evaluation.objects.count() == 1  # nothing half-written

    stranger = api_as(UserFactory())
    response = stranger.post("/api/v1/evaluations", {"version_id": version.pk, "prediction_set_ids": [pset.pk]})
    assert response.status_code == 404
    assert stranger.get(f"/api/v1/evaluations/{body['id']}").status_code == 404


@pytest.mark.django_db
def test_the_diagnosis_page_shows_stored_results_with_charts(tmp_path, workspace):
    user = UserFactory()
    version, _gt, _pred = synthetic(user, tmp_path, seed=6)
    pset = PredictionSet.objects.get(version=version)
    evaluation = evaluation_create(user=user, version=version, prediction_sets=[pset], run_now=True)
    client = logged_in(user)
    page = client.get(f"/evaluations/{evaluation.pk}/").content.decode()
    ap50 = evaluation.result["sets"][0]["stats"]["AP50"]
    assert f"{ap50:.3f}" in page
    assert 'id="chart-pr-' in page and 'id="chart-ap"' in page and "cat" in page
    assert logged_in(UserFactory()).get(f"/evaluations/{evaluation.pk}/").status_code == 404


@pytest.mark.django_db
def test_the_browser_filters_images_by_outcome_and_the_image_page_shows_both_sides(tmp_path, workspace):
    user = UserFactory()
    version, _gt, _pred = synthetic(user, tmp_path, images=30, seed=7)
    pset = PredictionSet.objects.get(version=version)
    tags = box_outcomes(version, pset, iou=0.5, score_threshold=0.3)
    boxes = Box.objects.in_bulk(list(tags))
    with_fn = {boxes[b].asset_id for b, tag in tags.items() if tag == "FN"}
    assert 0 < len(with_fn) < 30
    client = logged_in(user)
    page = client.get(f"/datasets/{version.pk}/", {"pset": pset.pk, "outcome": "FN", "iou": 0.5, "score": 0.3})
    html = page.content.decode()
    shown = {int(a) for a in re.findall(rf"/datasets/{version.pk}/assets/(\d+)\?", html)}
    assert shown == with_fn
    assert "outcome-FN" in html and "outcome-TP" in html

    # one image: the same tags as for the whole version (matching is per image), ground truth beside predictions
    asset = sorted(with_fn)[0]
    html = client.get(f"/datasets/{version.pk}/assets/{asset}", {"pset": pset.pk}).content.decode()
    mine = {b: t for b, t in tags.items() if boxes[b].asset_id == asset}
    assert f"FN {sum(t == 'FN' for t in mine.values())}" in html
    assert html.count("<svg") == 2
    # a prediction set of another dataset is not taken
    other, _g, _p = synthetic(user, tmp_path, images=3, seed=8)
    stray = PredictionSet.objects.get(version=other)
    html = client.get(f"/datasets/{version.pk}/assets/{asset}", {"pset": stray.pk}).content.decode()
    assert html.count("<svg") == 1
