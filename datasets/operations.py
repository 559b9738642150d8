"""Set operations that make new versions without copying image bytes, done set-wise in SQL.

merge (several inputs; assets in more than one: stop / prefer newer / prefer older), filter (keep or drop
assets with given classes, on ground truth, predictions or either), exclude (drop assets present in other
versions), sample (count or ratio, seeded), split (ratios into several versions, seeded).
"""

from __future__ import annotations

import functools
import random
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils.translation import gettext as _

from core.errors import Conflict, Invalid
from core.models import User
from datasets.classes import resolve_keywords
from datasets.importer import version_finish
from datasets.models import DatasetGroup, DatasetVersion, PredictionSet
from datasets.selectors import version_visible_to
from models_app.models import Task
from models_app.services import task_create
from projects.models import Project

KINDS = ("merge", "filter", "exclude", "sample", "split")
MERGE_STRATEGIES = ("stop", "newer", "older")
ITEM_COLUMNS = "asset_id, name, tags"
BOX_COLUMNS = "asset_id, label_id, x1, y1, x2, y2, score, tags"


def _ready_inputs(user: User, ids: list[int]) -> list[DatasetVersion]:
    versions = [version_visible_to(user, i) for i in ids]
    for version in versions:
        if version.state != DatasetVersion.State.READY:
            raise Conflict(_("Dataset %(id)d is not ready.") % {"id": version.pk}, code="not_ready")
    return versions


def _validate(user: User, kind: str, params: dict[str, Any]) -> tuple[list[DatasetVersion], int]:
    """Check everything before anything is created; answer the inputs and the number of outputs."""
    if kind not in KINDS:
        raise Invalid(_("Unknown operation."), code="invalid_operation")
    inputs = _ready_inputs(user, [int(i) for i in params.get("inputs", [])])
    if not inputs:
        raise Invalid(_("Choose the input datasets."), code="no_inputs")
    outputs = 1
    if kind == "merge":
        if len(inputs) < 2:
            raise Invalid(_("A merge needs at least two datasets."), code="no_inputs")
        if params.get("strategy", "stop") not in MERGE_STRATEGIES:
            raise Invalid(_("Conflict strategy: stop, newer or older."), code="invalid_strategy")
    elif len(inputs) != 1:
        raise Invalid(_("This operation takes one dataset."), code="invalid_inputs")
    if kind == "filter":
        names = params.get("classes") or []
        if not names:
            raise Invalid(_("Choose classes to filter by."), code="no_classes")
        unknown = [n for n in names if " ".join(str(n).split()).lower() not in resolve_keywords(names)]
        if unknown:
            raise Invalid(_("Unknown classes: %(names)s") % {"names": ", ".join(unknown)}, code="unknown_classes")
        if params.get("mode", "keep") not in ("keep", "drop") or params.get("on", "gt") not in ("gt", "pred", "either"):
            raise Invalid(_("Filter mode is keep or drop, on gt, pred or either."), code="invalid_filter")
    elif kind == "exclude":
        _ready_inputs(user, [int(i) for i in params.get("others", [])] or _raise_no_others())
    elif kind == "sample":
        count, ratio = params.get("count"), params.get("ratio")
        if (count is None) == (ratio is None):
            raise Invalid(_("Give a count or a ratio."), code="invalid_sample")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise Invalid(_("The count is a whole number of at least 1."), code="invalid_sample")
        if ratio is not None and not (isinstance(ratio, int | float) and 0 < ratio <= 1):
            raise Invalid(_("The ratio is above 0 and at most 1."), code="invalid_sample")
    elif kind == "split":
        ratios = params.get("ratios") or []
        if (
            len(ratios) < 2
            or any(not isinstance(r, int | float) or r <= 0 for r in ratios)
            or abs(sum(ratios) - 1) > 1e-6
        ):
            raise Invalid(_("Split ratios: at least two positive numbers adding up to 1."), code="invalid_split")
        outputs = len(ratios)
    if not isinstance(params.get("seed", 0), int):
        raise Invalid(_("The seed is a whole number."), code="invalid_seed")
    return inputs, outputs


def _raise_no_others() -> list[int]:
    raise Invalid(_("Choose the datasets whose images to exclude."), code="no_inputs")


def operation_start(
    *, user: User, kind: str, name: str, params: dict[str, Any], project: Project | None = None
) -> list[DatasetVersion]:
    """Validate and record a set operation; its outputs land in ``project`` (default: the first input's)."""
    name = name.strip()
    if not name:
        raise Invalid(_("A dataset needs a name."), code="invalid_name")
    inputs, outputs = _validate(user, kind, params)
    project = project or inputs[0].group.project
    if project.owner_id != user.pk:
        raise Invalid(_("The first input must belong to one of your projects."), code="invalid_inputs")
    names = [name] if outputs == 1 else [f"{name}-{i + 1}" for i in range(outputs)]
    try:
        with transaction.atomic():
            task = task_create(user=user, kind=kind, project=project, parameters={**params, "kind": kind})
            versions = []
            for output_name in names:
                group = DatasetGroup.objects.create(project=project, name=output_name)
                version = DatasetVersion.objects.create(group=group, number=1, task=task, parameters=task.parameters)
                version.parents.set(inputs)
                versions.append(version)
            transaction.on_commit(functools.partial(_enqueue, task.pk))
    except IntegrityError as exc:
        raise Conflict(_("This project already has a dataset with that name."), code="dataset_name_taken") from exc
    return versions


def _enqueue(task_id: int) -> None:
    from datasets.tasks import run_operation

    run_operation.delay(task_id)


# --- execution ------------------------------------------------------------------------------------


def _copy(src: int, dst: int, condition: str = "", args: tuple[Any, ...] = ()) -> None:
    """Copy the rows of the assets of ``src`` (alias ``x``) that meet ``condition`` into ``dst``.

    The chosen assets are put in a temporary table first (the condition is evaluated once, and may refer to
    the target as it was before this copy); boxes and memberships are then copied by joining it.
    """
    where = f" AND ({condition})" if condition else ""
    psets = _prediction_set_map(src, dst)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS ymir_copy (asset_id bigint PRIMARY KEY)")
        cursor.execute("DELETE FROM ymir_copy")
        cursor.execute(
            "INSERT INTO ymir_copy (asset_id) SELECT x.asset_id FROM datasets_datasetasset x "
            f"WHERE x.version_id = %s{where}",
            [src, *args],
        )
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE ymir_copy")
        layers: list[tuple[str, list[Any]]] = [("b.prediction_set_id IS NULL", [None, src])]
        layers += [("b.prediction_set_id = %s", [new, src, old]) for old, new in psets.items()]
        for layer, values in layers:
            cursor.execute(
                f"INSERT INTO datasets_box (version_id, prediction_set_id, {BOX_COLUMNS}) "
                f"SELECT %s, %s, {_prefixed('b', BOX_COLUMNS)} FROM datasets_box b "
                f"JOIN ymir_copy c ON c.asset_id = b.asset_id WHERE b.version_id = %s AND {layer}",
                [dst, *values],
            )
        cursor.execute(
            f"INSERT INTO datasets_datasetasset (version_id, {ITEM_COLUMNS}) "
            f"SELECT %s, {_prefixed('x', ITEM_COLUMNS)} FROM datasets_datasetasset x "
            "JOIN ymir_copy c ON c.asset_id = x.asset_id WHERE x.version_id = %s",
            [dst, src],
        )


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _prediction_set_map(src: int, dst: int) -> dict[int, int]:
    mapping = {}
    for pset in PredictionSet.objects.filter(version_id=src):
        new, _created = PredictionSet.objects.get_or_create(
            version_id=dst, source=pset.source, name=pset.name, defaults={"model_info": pset.model_info}
        )
        mapping[pset.pk] = new.pk
    return mapping


NOT_IN_TARGET = "NOT EXISTS (SELECT 1 FROM datasets_datasetasset t WHERE t.version_id = %s AND t.asset_id = x.asset_id)"


def _selection(src: int, chosen: list[int]) -> str:
    """Put chosen asset ids in a temporary table; answer the condition that selects them."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS ymir_selection (asset_id bigint PRIMARY KEY)")
        cursor.execute("DELETE FROM ymir_selection")
        for start in range(0, len(chosen), 5000):
            cursor.executemany(
                "INSERT INTO ymir_selection (asset_id) VALUES (%s)", [(i,) for i in chosen[start : start + 5000]]
            )
    return "x.asset_id IN (SELECT asset_id FROM ymir_selection)"


def _shuffled_assets(src: int, seed: int) -> list[int]:
    ids = sorted(DatasetVersion.objects.get(pk=src).items.values_list("asset_id", flat=True))
    random.Random(seed).shuffle(ids)  # noqa: S311 (reproducible sampling, not security)
    return ids


def operation_execute(task: Task, outputs: list[DatasetVersion]) -> None:
    params = task.parameters
    kind = params["kind"]
    inputs = [int(i) for i in params["inputs"]]
    seed = int(params.get("seed", 0))
    with transaction.atomic():
        if kind == "merge":
            _merge(inputs, outputs[0].pk, params.get("strategy", "stop"))
        elif kind == "filter":
            label_ids = sorted(set(resolve_keywords(params["classes"]).values()))
            marks = ",".join(["%s"] * len(label_ids))
            on = {"gt": " AND b.prediction_set_id IS NULL", "pred": " AND b.prediction_set_id IS NOT NULL"}.get(
                params.get("on", "gt"), ""
            )
            exists = (
                "EXISTS (SELECT 1 FROM datasets_box b WHERE b.version_id = x.version_id AND b.asset_id = x.asset_id "
                f"AND b.label_id IN ({marks}){on})"
            )
            condition = exists if params.get("mode", "keep") == "keep" else f"NOT {exists}"
            _copy(inputs[0], outputs[0].pk, condition, tuple(label_ids))
        elif kind == "exclude":
            others = [int(i) for i in params["others"]]
            marks = ",".join(["%s"] * len(others))
            condition = (
                "NOT EXISTS (SELECT 1 FROM datasets_datasetasset o "
                f"WHERE o.version_id IN ({marks}) AND o.asset_id = x.asset_id)"
            )
            _copy(inputs[0], outputs[0].pk, condition, tuple(others))
        elif kind == "sample":
            ids = _shuffled_assets(inputs[0], seed)
            n = params["count"] if params.get("count") is not None else round(len(ids) * float(params["ratio"]))
            _copy(inputs[0], outputs[0].pk, _selection(inputs[0], ids[: min(n, len(ids))]))
        elif kind == "split":
            ids = _shuffled_assets(inputs[0], seed)
            bounds, acc = [0], 0.0
            for ratio in params["ratios"]:
                acc += ratio
                bounds.append(round(acc * len(ids)))
            bounds[-1] = len(ids)
            for i, output in enumerate(outputs):
                _copy(inputs[0], output.pk, _selection(inputs[0], ids[bounds[i] : bounds[i + 1]]))
        for output in outputs:
            version_finish(output, {"operation": kind})


def _merge(inputs: list[int], dst: int, strategy: str) -> None:
    versions = list(DatasetVersion.objects.filter(pk__in=inputs))
    if strategy == "stop":
        marks = ",".join(["%s"] * len(inputs))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM (SELECT asset_id FROM datasets_datasetasset "
                f"WHERE version_id IN ({marks}) GROUP BY asset_id HAVING COUNT(*) > 1) AS shared",
                inputs,
            )
            (shared,) = cursor.fetchone() or (0,)
        if shared:
            raise Conflict(
                _("%(n)d images are in more than one input. Choose 'prefer newer' or 'prefer older'.") % {"n": shared},
                code="merge_conflict",
                details={"shared_assets": shared},
            )
        ordered = sorted(versions, key=lambda v: inputs.index(v.pk))
    else:
        ordered = sorted(versions, key=lambda v: (v.created_at, v.pk), reverse=strategy == "newer")
    for version in ordered:
        _copy(version.pk, dst, NOT_IN_TARGET, (dst,))


def overlap_count(a: int, b: int) -> int:
    """Images in both versions (the training/validation overlap check)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM datasets_datasetasset x JOIN datasets_datasetasset y "
            "ON x.asset_id = y.asset_id WHERE x.version_id = %s AND y.version_id = %s",
            [a, b],
        )
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def copy_selected(src: int, dst: int, asset_ids: list[int]) -> None:
    """Copy the chosen assets of ``src`` (memberships, ground truth, prediction sets) into ``dst``."""
    _copy(src, dst, _selection(src, asset_ids))
