"""Where a finished executor run's outputs land: a model version, a mined dataset version, prediction sets.

Everything here runs inside the transaction that marks the task done, so a run's outputs appear together
with its final state or not at all.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Max

from datasets.classes import resolve_keywords
from datasets.importer import version_finish
from datasets.models import Asset, Box, DatasetAsset, DatasetGroup, DatasetVersion, PredictionSet
from datasets.operations import copy_selected
from models_app import mining, taskdir
from models_app.models import ModelGroup, ModelStage, ModelVersion, Task

logger = logging.getLogger(__name__)


def model_dir(version_id: int) -> Path:
    return Path(settings.YMIR_WORKSPACE) / "models" / str(version_id)


def land(
    task: Task,
    result: dict[str, Any],
    out_dir: Path,
    scores: list[tuple[str, float]] | None,
    predictions: dict[str, list[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """Create what the run produced; answer the ids of what landed (kept in the task's result)."""
    params = task.parameters
    if task.project_id is None:
        return {}
    landed: dict[str, Any] = {}
    if "training" in result:
        model = _land_model(task, result["training"], out_dir)
        landed["model_version"] = model.pk
        landed["stage_evaluations"] = _evaluate_stages(model, task)
    if scores is not None:
        version = _land_mined(task, scores, predictions)
        landed["dataset_version"] = version.pk
    elif predictions is not None:
        target = DatasetVersion.objects.get(pk=params["candidates"])
        pset, skipped = _land_predictions(task, target, predictions)
        target.pred_box_count = Box.objects.filter(version=target, prediction_set__isnull=False).count()
        target.save(update_fields=["pred_box_count"])
        landed.update(prediction_set=pset.pk, dataset_version=target.pk, skipped_boxes=skipped)
        if params.get("evaluate_stage"):
            landed["evaluation"] = _evaluate_prediction_set(task, target, pset)
    return landed


def _evaluate_stages(model: ModelVersion, task: Task) -> list[int]:
    """Submit the inference runs whose predictions the platform evaluates (one per stage)."""
    from core.errors import Invalid
    from models_app.training import stage_evaluations_submit

    try:
        return [t.pk for t in stage_evaluations_submit(model, task)]
    except Invalid as exc:  # e.g. the validation set was deleted meanwhile: the model still lands
        logger.warning("model %s: stage evaluation not started: %s", model.pk, exc.message)
        return []


def _evaluate_prediction_set(task: Task, version: DatasetVersion, pset: PredictionSet) -> int | None:
    from core.errors import Invalid
    from models_app.evaluations import evaluation_create

    try:
        return evaluation_create(user=task.user, version=version, prediction_sets=[pset], stage_metrics=True).pk
    except Invalid as exc:
        logger.warning("task %s: evaluation not started: %s", task.pk, exc.message)
        return None


def _land_model(task: Task, training: dict[str, Any], out_dir: Path) -> ModelVersion:
    params = task.parameters
    assert task.project_id is not None
    name = str(params.get("model_name") or "").strip() or f"model-{task.pk}"
    group = ModelGroup.objects.filter(project_id=task.project_id, name__iexact=name).first()
    if group is None:
        group = ModelGroup.objects.create(project_id=task.project_id, name=name)
    ModelGroup.objects.select_for_update().filter(pk=group.pk).first()  # numbers are taken one at a time
    number = (group.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = ModelVersion.objects.create(
        group=group,
        number=number,
        task=task,
        image=task.image,
        train_version_id=params.get("train"),
        val_version_id=params.get("val"),
        class_names=list(params["class_names"]),
        config=task.config,
        recommended_stage=training["best_stage"],
    )
    target = model_dir(version.pk)
    shutil.rmtree(target, ignore_errors=True)  # an id a rolled-back attempt used (SQLite reuses them)
    models_dir = out_dir / "models"
    for stage_name, stage in training["stages"].items():
        kept = []
        for name_or_path in stage["files"]:
            source = Path(name_or_path)
            relative = Path(stage_name) / source.name if source.is_absolute() else Path(name_or_path)
            taskdir.link_file(source if source.is_absolute() else models_dir / source, target / relative)
            kept.append(str(relative))
        ModelStage.objects.create(
            version=version, name=stage_name, files=kept, reported_map=stage["mAP"], timestamp=stage["timestamp"]
        )
    board = out_dir / "tensorboard"
    for file in sorted(p for p in board.rglob("*") if p.is_file() and not p.is_symlink()) if board.is_dir() else []:
        taskdir.link_file(file, target / "tensorboard" / file.relative_to(board))
    return version


def _free_group_name(project_id: int, wanted: str) -> str:
    name, n = wanted, 1
    while DatasetGroup.objects.filter(project_id=project_id, name__iexact=name).exists():
        n += 1
        name = f"{wanted}-{n}"
    return name


def _land_mined(
    task: Task, scores: list[tuple[str, float]], predictions: dict[str, list[dict[str, Any]]] | None
) -> DatasetVersion:
    params = task.parameters
    assert task.project_id is not None
    source_id = int(params["candidates"])
    scores = _without_excluded(task, scores)
    top_k = int(params.get("top_k") or 0) or len(scores)
    if params.get("class_balance") and predictions:
        stage = ModelStage.objects.select_related("version").filter(pk=params.get("model_stage")).first()
        scores = mining.class_balanced(scores, predictions, stage.version.train_version_id if stage else None)
    near_duplicates = 0
    if params.get("diversity"):
        scores, near_duplicates = mining.diverse(scores, top_k)
    chosen = dict(scores[:top_k])
    ids = dict(Asset.objects.filter(sha1__in=list(chosen)).values_list("sha1", "id"))
    name = _free_group_name(task.project_id, str(params.get("output_name") or "").strip() or f"mined-{task.pk}")
    group = DatasetGroup.objects.create(project_id=task.project_id, name=name)
    version = DatasetVersion.objects.create(group=group, number=1, task=task, parameters=params)
    version.parents.set([source_id])
    copy_selected(source_id, version.pk, list(ids.values()))
    items = list(DatasetAsset.objects.filter(version=version, asset_id__in=ids.values()))
    score_of = {ids[sha1]: score for sha1, score in chosen.items() if sha1 in ids}
    for item in items:  # the mining score travels with the image as an asset tag
        item.tags = {**item.tags, "mining_score": round(score_of[item.asset_id], 6)}
    DatasetAsset.objects.bulk_update(items, ["tags"], batch_size=2000)
    report: dict[str, Any] = {
        "operation": "mining",
        "scored": 0 if params.get("skip_scoring") else len(scores),
        "top_k": top_k,
        "excluded": params.get("excluded", 0),
        "near_duplicates_skipped": near_duplicates,
        "class_balance": bool(params.get("class_balance") and predictions),
    }
    if predictions is not None:
        pset, report["skipped_boxes"] = _land_predictions(
            task, version, {sha1: boxes for sha1, boxes in predictions.items() if sha1 in chosen}
        )
        # what labelling will cost: the boxes the model predicts on the chosen images
        report["predicted_boxes"] = Box.objects.filter(prediction_set=pset).count()
    version_finish(version, report)
    return version


def all_candidates(version_id: int) -> list[tuple[str, float]]:
    """Top-k at least the pool: every image is taken, unscored (score 0), in membership order."""
    rows = DatasetAsset.objects.filter(version_id=version_id).order_by("id").values_list("asset__sha1", flat=True)
    return [(sha1, 0.0) for sha1 in rows]


def land_without_run(task: Task) -> dict[str, Any]:
    """A mining task whose top-k covers the pool and that asks no predictions: nothing to run."""
    scores = all_candidates(int(task.parameters["candidates"]))
    return {"landed": {"dataset_version": _land_mined(task, scores, None).pk}, "mining": {"count": 0}}


def _without_excluded(task: Task, scores: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Drop images already labelled (ground truth in any dataset of the project) or already mined (in a
    dataset a mining run of the project produced), when asked; the count goes to the task's parameters."""
    params = task.parameters
    if not (params.get("exclude_labelled") or params.get("exclude_mined")):
        return scores
    assert task.project_id is not None
    project_versions = DatasetVersion.objects.filter(group__project_id=task.project_id)
    excluded: set[int] = set()
    if params.get("exclude_labelled"):
        excluded |= set(
            Box.objects.filter(version__in=project_versions, prediction_set__isnull=True)
            .values_list("asset_id", flat=True)
            .distinct()
        )
    if params.get("exclude_mined"):
        mined = project_versions.filter(task__kind=Task.Kind.MINING).exclude(task=task)
        excluded |= set(DatasetAsset.objects.filter(version__in=mined).values_list("asset_id", flat=True))
    sha1s = set(Asset.objects.filter(pk__in=excluded).values_list("sha1", flat=True)) if excluded else set()
    kept = [(sha1, score) for sha1, score in scores if sha1 not in sha1s]
    params["excluded"] = len(scores) - len(kept)
    return kept


def _land_predictions(
    task: Task, version: DatasetVersion, predictions: dict[str, list[dict[str, Any]]]
) -> tuple[PredictionSet, int]:
    """A prediction set on ``version`` with the boxes of its images; boxes of unknown classes are skipped."""
    params = task.parameters
    stage = ModelStage.objects.select_related("version__group").filter(pk=params.get("model_stage")).first()
    name = f"{stage.version} / {stage.name}" if stage else f"{task.image} #{task.pk}"
    info = {
        "task": task.pk,
        "image": str(task.image),
        "stage": stage.pk if stage else None,
        "model_version": stage.version_id if stage else None,
        "evaluate_stage": params.get("evaluate_stage"),
    }
    pset = PredictionSet.objects.create(version=version, source=PredictionSet.Source.MODEL, name=name, model_info=info)
    label_of = resolve_keywords({box["class_name"] for boxes in predictions.values() for box in boxes})
    assets = {
        sha1: (pk, w, h)
        for sha1, pk, w, h in Asset.objects.filter(
            sha1__in=list(predictions), pk__in=DatasetAsset.objects.filter(version=version).values("asset_id")
        ).values_list("sha1", "id", "width", "height")
    }
    rows, skipped = [], 0
    for sha1, boxes in predictions.items():
        if sha1 not in assets:
            continue
        asset_id, width, height = assets[sha1]
        for box in boxes:
            label = label_of.get(" ".join(box["class_name"].split()).lower())
            x1, x2 = max(0.0, box["x1"]), min(float(width), box["x2"])
            y1, y2 = max(0.0, box["y1"]), min(float(height), box["y2"])
            if label is None or x2 <= x1 or y2 <= y1:
                skipped += 1
                continue
            rows.append(
                Box(
                    version=version,
                    asset_id=asset_id,
                    label_id=label,
                    prediction_set=pset,
                    x1=x1,
                    y1=y1,
                    x2=x2,
                    y2=y2,
                    score=box["score"],
                )
            )
    Box.objects.bulk_create(rows, batch_size=2000)
    return pset, skipped
