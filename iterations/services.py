"""The iteration loop: set up, run each round's five steps (prepare → mine → label → merge → train), follow
them, record the history, and run the random control beside the mined arm.

Steps start only when their inputs are ready; each start is one transaction on the round's row (two tabs
advancing the same step: the second sees ``step_started`` and the new state, no second task). The driver
(:func:`iteration_advance`, called by the beat, the pages and the API) moves what needs nobody: a training
that landed becomes the round's model, its best stage (by the platform's own mAP on the fixed validation set)
is evaluated on the test sets, a finished round opens the next, and the random control's steps run by
themselves. Every step can be skipped; a finished step can be run again while the next has not started.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Conflict, Invalid
from core.models import User
from datasets.classes import resolve_keywords
from datasets.importer import version_finish
from datasets.models import Box, DatasetAsset, DatasetGroup, DatasetVersion
from datasets.operations import copy_selected, operation_start
from iterations.models import Iteration, Round
from models_app.landing import _free_group_name
from models_app.models import ExecutorImage, ModelStage, ModelVersion, Task
from models_app.training import inference_start, mining_start, training_start
from projects.models import Project

logger = logging.getLogger(__name__)
STEPS = ("prepare", "mine", "label", "merge", "train")
STRATEGIES = (
    "random",
    "entropy",
    "margin",
    "aldd",
    "cald",
    "cost_aware",
    "shift_aldd",
    "shift_mass",
    "shift_aldd_mass",
    "spread",
)
State = Task.State


def oracle_enabled() -> bool:
    return bool(getattr(settings, "YMIR_ORACLE_LABELLER", False))


# --- set up ---------------------------------------------------------------------------------------------


def _ready(version: DatasetVersion | None, what: str) -> DatasetVersion:
    if version is None:
        raise Invalid(_("Choose the %(what)s.") % {"what": what}, code="missing_setting", details={"missing": what})
    if version.state != DatasetVersion.State.READY:
        raise Invalid(_("The %(what)s is not ready.") % {"what": what}, code="not_ready", details={"missing": what})
    return version


def missing_settings(values: dict[str, Any]) -> list[str]:
    """What is still needed before the loop can start (the page lists it beside a disabled button)."""
    needed = {
        "train_version": _("training set"),
        "pool_version": _("mining set"),
        "val_version": _("validation set"),
        "training_image": _("training image"),
        "mining_image": _("mining image"),
        "class_names": _("classes"),
        "top_k": _("top-k per round"),
    }
    return [str(label) for key, label in needed.items() if not values.get(key)]


def iteration_create(
    *,
    user: User,
    project: Project,
    name: str,
    train_version: DatasetVersion | None,
    pool_version: DatasetVersion | None,
    val_version: DatasetVersion | None,
    test_versions: list[DatasetVersion] | None = None,
    initial_stage: ModelStage | None = None,
    training_image: ExecutorImage | None,
    mining_image: ExecutorImage | None,
    class_names: list[str],
    strategy: str = "entropy",
    exclude_seen: bool = True,
    chunk_size: int = 0,
    top_k: int = 20,
    class_balance: bool = False,
    diversity: bool = False,
    training_config: dict[str, Any] | None = None,
    mining_config: dict[str, Any] | None = None,
    target_map: float | None = None,
    max_rounds: int | None = None,
    random_control: bool = False,
    seed: int = 0,
    oracle_version: DatasetVersion | None = None,
) -> Iteration:
    if project.owner_id != user.pk:
        raise Invalid(_("You can only iterate in your own projects."), code="not_your_project")
    missing = missing_settings(
        {
            "train_version": train_version,
            "pool_version": pool_version,
            "val_version": val_version,
            "training_image": training_image,
            "mining_image": mining_image,
            "class_names": class_names,
            "top_k": top_k,
        }
    )
    if missing:
        raise Invalid(
            _("Still missing: %(what)s.") % {"what": ", ".join(missing)},
            code="missing_setting",
            details={"missing": missing},
        )
    assert train_version and pool_version and val_version and training_image and mining_image
    for version, what in (
        (train_version, _("training set")),
        (pool_version, _("mining set")),
        (val_version, _("validation set")),
    ):
        _ready(version, str(what))
        if version.group.project_id != project.pk and not version.is_public:
            raise Invalid(_("Datasets must belong to the project or be public."), code="invalid_dataset")
    if len({train_version.pk, pool_version.pk, val_version.pk}) < 3:
        raise Invalid(_("The training, mining and validation sets must be different datasets."), code="invalid_dataset")
    if "training" not in training_image.templates or "mining" not in mining_image.templates:
        raise Invalid(_("Choose an image that trains and one that mines."), code="unsupported_task_type")
    if strategy not in STRATEGIES:
        raise Invalid(_("Unknown mining strategy."), code="invalid_strategy")
    if top_k < 1:
        raise Invalid(_("Top-k must be a positive number of images, for mining."), code="invalid_top_k")
    if target_map is not None and not 0 < target_map <= 1:
        raise Invalid(_("The target mAP is between 0 and 1."), code="invalid_target")
    if max_rounds is not None and not 1 <= max_rounds <= 100:
        raise Invalid(_("Rounds: between 1 and 100."), code="invalid_rounds")
    names = [" ".join(n.split()) for n in class_names if n.strip()]
    unknown = [n for n in names if n.lower() not in resolve_keywords(names)]
    if unknown:
        raise Invalid(_("Unknown classes: %(names)s") % {"names": ", ".join(unknown)}, code="unknown_classes")
    if initial_stage is not None and initial_stage.version.group.project_id != project.pk:
        raise Invalid(_("The model must belong to the project."), code="invalid_model")
    if oracle_version is not None and not oracle_enabled():
        raise Invalid(_("The oracle labeller is a test tool and is off here."), code="oracle_off")
    if Iteration.objects.filter(project=project, state=Iteration.State.ITERATING).exists():
        raise Conflict(_("This project is already iterating; finish that loop first."), code="already_iterating")
    with transaction.atomic():
        iteration = Iteration.objects.create(
            project=project,
            user=user,
            name=" ".join(name.split())[:60] or f"loop-{project.pk}",
            train_version=train_version,
            pool_version=pool_version,
            val_version=val_version,
            initial_stage=initial_stage,
            training_image=training_image,
            mining_image=mining_image,
            class_names=names,
            strategy=strategy,
            exclude_seen=exclude_seen,
            chunk_size=max(0, int(chunk_size or 0)),
            top_k=top_k,
            class_balance=class_balance,
            diversity=diversity,
            training_config=dict(training_config or {}),
            mining_config=dict(mining_config or {}),
            target_map=target_map,
            max_rounds=max_rounds,
            random_control=random_control,
            seed=seed,
            oracle_version=oracle_version,
        )
        iteration.test_versions.set(test_versions or [])
        first = 0 if initial_stage is None else 1  # round 0: the initial model, trained on the training set
        _open_round(iteration, first, train_version, initial_stage)
    return iteration


def _open_round(iteration: Iteration, number: int, train: DatasetVersion, stage: ModelStage | None) -> list[Round]:
    arms = [Round.Arm.MINED] + ([Round.Arm.RANDOM] if iteration.random_control and number > 0 else [])
    rounds = []
    for arm in arms:
        base_train, base_stage = train, stage
        if arm == Round.Arm.RANDOM:  # the control continues from its own last round
            previous = (
                iteration.rounds.filter(arm=arm, number=number - 1).first()
                or iteration.rounds.filter(arm=Round.Arm.MINED, number=number - 1).first()
            )
            if previous is not None:
                base_train = previous.merged or previous.base_train
                base_stage = previous.best_stage or previous.base_stage
        skipped = list(STEPS[:4]) if number == 0 else (["prepare"] if arm == Round.Arm.RANDOM else [])
        rounds.append(
            Round.objects.create(
                iteration=iteration,
                number=number,
                arm=arm,
                base_train=base_train,
                base_stage=base_stage,
                skipped=skipped,
            )
        )
    return rounds


# --- step states -----------------------------------------------------------------------------------------


def _version_state(version: DatasetVersion | None) -> str:
    if version is None:
        return "todo"
    return {"ready": "done", "pending": "running", "error": "error"}[version.state]


def step_states(round_: Round) -> dict[str, str]:
    """Each step: todo, running, done, error or skipped (what the page shows and what gates the next)."""
    states: dict[str, str] = {}
    for step in STEPS:
        if step in round_.skipped:
            states[step] = "skipped"
    states.setdefault("prepare", _version_state(round_.prepared))
    if states["prepare"] == "done" and _chunk_due(round_):
        states["prepare"] = "running"  # the chunk of the prepared pool comes next
    if "mine" not in states:
        if round_.picked is not None:
            states["mine"] = _version_state(round_.picked)
        elif round_.pick_task is not None:
            states["mine"] = "error" if round_.pick_task.state in (State.ERROR, State.TERMINATED) else "running"
        else:
            states["mine"] = "todo"
    if "label" not in states:
        if round_.labelled is not None:
            states["label"] = _version_state(round_.labelled)
        elif round_.labelling is not None:
            ended = round_.labelling.task.state in (State.ERROR, State.TERMINATED)
            states["label"] = "error" if ended else "running"
        else:
            states["label"] = "todo"
    states.setdefault("merge", _version_state(round_.merged))
    if "train" not in states:
        task = round_.training_task
        if round_.finished_at is not None or round_.best_stage is not None:
            states["train"] = "done"
        elif task is None:
            states["train"] = "todo"
        elif task.state in (State.ERROR, State.TERMINATED):
            states["train"] = "error"
        else:
            states["train"] = "running"
    return {step: states[step] for step in STEPS}


def can_start(round_: Round, step: str) -> tuple[bool, str]:
    """Whether a step may start now, and why not."""
    states = step_states(round_)
    if round_.finished_at is not None:
        return False, _("This round has finished.")
    if states[step] not in ("todo",):
        return False, _("This step has already started.")
    index = STEPS.index(step)
    for before in STEPS[:index]:
        partial = step == "merge" and before == "label" and round_.labelling is not None  # what is labelled so far
        if states[before] not in ("done", "skipped") and not (partial and states[before] in ("running", "error")):
            return False, _("Waiting for the step before: %(step)s.") % {"step": step_title(before)}
    if step == "label" and states["mine"] == "done" and round_.picked is not None and round_.picked.asset_count == 0:
        return False, _("Mining picked nothing: skip to training.")
    return True, ""


def step_title(step: str) -> str:
    return {
        "prepare": _("Prepare mining data"),
        "mine": _("Mine"),
        "label": _("Label"),
        "merge": _("Merge into the training set"),
        "train": _("Train"),
    }[step]


def _locked(round_id: int, step: str) -> Round:
    round_ = Round.objects.select_for_update(of=("self",)).select_related("iteration").get(pk=round_id)
    ok, why = can_start(round_, step)
    if not ok:
        raise Conflict(why, code="step_started" if step_states(round_)[step] != "todo" else "step_waiting")
    return round_


def _name(round_: Round, what: str) -> str:
    arm = "" if round_.arm == Round.Arm.MINED else "-random"
    wanted = f"{round_.iteration.name}-r{round_.number}{arm}-{what}"
    return _free_group_name(round_.iteration.project_id, wanted)


def _pool_of(round_: Round) -> DatasetVersion:
    if round_.arm == Round.Arm.RANDOM:  # the control picks from the same prepared pool as the mined arm
        mined = round_.iteration.rounds.filter(number=round_.number, arm=Round.Arm.MINED).first()
        if mined is not None and mined.prepared is not None:
            return mined.prepared
    return round_.prepared or round_.iteration.pool_version


# --- the steps --------------------------------------------------------------------------------------


def prefill(round_: Round) -> dict[str, Any]:
    """What each step would use now: the iteration's settings, or the previous round's choices."""
    iteration = round_.iteration
    previous = iteration.rounds.filter(arm=round_.arm, number=round_.number - 1).first()
    last = previous.settings if previous else {}
    excluded = [round_.base_train.pk]
    excluded += list(
        iteration.rounds.filter(number__lt=round_.number, picked__isnull=False).values_list("picked_id", flat=True)
    )
    return {
        "exclude": excluded,
        "pool": _pool_of(round_).pk,
        "model_stage": round_.base_stage.pk if round_.base_stage else None,
        "top_k": int(last.get("top_k") or iteration.top_k),
        "strategy": str(last.get("strategy") or iteration.strategy),
        "class_balance": bool(last.get("class_balance", iteration.class_balance)),
        "diversity": bool(last.get("diversity", iteration.diversity)),
        "pre_annotations": True,
        "labelling": "oracle" if iteration.oracle_version_id else "label_studio",
        "merge_into": round_.base_train.pk,
        "train": (round_.merged or round_.base_train).pk,
        "val": iteration.val_version_id,
        "pretrained": round_.base_stage.pk if round_.base_stage else None,
        "training_config": dict(last.get("training_config") or iteration.training_config),
    }


def step_start(*, user: User, round_id: int, step: str, options: dict[str, Any] | None = None) -> Round:
    """Start one step with the prefilled values, changed by ``options`` (top_k, strategy, training_config,
    pretrained, labellers, base_url)."""
    if step not in STEPS:
        raise Invalid(_("Unknown step."), code="invalid_step")
    options = dict(options or {})
    with transaction.atomic():
        round_ = _locked(round_id, step)
        iteration = round_.iteration
        if iteration.user_id != user.pk:
            raise Invalid(_("Only the one who set up this loop runs its steps."), code="not_your_project")
        values = prefill(round_)
        if step == "prepare":
            others = list(dict.fromkeys(values["exclude"]))
            if not iteration.exclude_seen:
                others = [round_.base_train.pk]
            (round_.prepared,) = operation_start(
                project=round_.iteration.project,
                user=user,
                kind="exclude",
                name=_name(round_, "pool"),
                params={"inputs": [iteration.pool_version_id], "others": others},
            )
        elif step == "mine":
            _start_pick(user, round_, values, options)
        elif step == "label":
            _start_label(user, round_, options)
        elif step == "merge":
            _start_merge(user, round_)
        else:
            _start_train(user, round_, values, options)
        round_.save()
    return round_


def _start_pick(user: User, round_: Round, values: dict[str, Any], options: dict[str, Any]) -> None:
    iteration = round_.iteration
    pool = _pool_of(round_)
    if round_.arm == Round.Arm.RANDOM:
        mined = iteration.rounds.filter(number=round_.number, arm=Round.Arm.MINED).first()
        count = int((mined.settings.get("top_k") if mined else None) or iteration.top_k)
        if pool.asset_count == 0:
            round_.skipped = [*round_.skipped, "mine", "label", "merge"]
            round_.message = _("The pool is empty: nothing to pick.")
            return
        (round_.picked,) = operation_start(
            project=round_.iteration.project,
            user=user,
            kind="sample",
            name=_name(round_, "picked"),
            params={
                "inputs": [pool.pk],
                "count": min(count, pool.asset_count),
                "seed": iteration.seed * 1000 + round_.number,
            },
        )
        round_.settings = {**round_.settings, "top_k": count}
        return
    if pool.asset_count == 0:
        round_.skipped = [*round_.skipped, "mine", "label", "merge"]
        round_.message = _("Mining returned nothing: the pool is empty. The round goes on with training.")
        return
    if round_.base_stage is None:
        raise Conflict(_("There is no model to mine with yet."), code="no_model")
    top_k = int(options.get("top_k") or values["top_k"])
    strategy = str(options.get("strategy") or values["strategy"])
    if strategy not in STRATEGIES:
        raise Invalid(_("Unknown mining strategy."), code="invalid_strategy")
    config = {**iteration.mining_config, "strategy": strategy, "seed": iteration.seed}
    class_balance = bool(options.get("class_balance", values["class_balance"]))
    diversity = bool(options.get("diversity", values["diversity"]))
    round_.pick_task = mining_start(
        user=user,
        project=iteration.project,
        image=iteration.mining_image,
        candidates=pool,
        stage=round_.base_stage,
        top_k=top_k,
        also_infer=True,  # the predictions become the labellers' pre-annotations
        class_balance=class_balance,
        diversity=diversity,
        config=config,
        output_name=_name(round_, "mined"),
    )
    round_.settings = {
        **round_.settings,
        "top_k": top_k,
        "strategy": strategy,
        "class_balance": class_balance,
        "diversity": diversity,
    }


def _start_label(user: User, round_: Round, options: dict[str, Any]) -> None:
    from datasets.labelling import labelling_create

    iteration = round_.iteration
    assert round_.picked is not None
    if iteration.oracle_version_id:
        round_.labelled = oracle_label(round_)
        return
    pset = round_.picked.prediction_sets.order_by("-created_at").first()
    round_.labelling = labelling_create(
        user=user,
        version=round_.picked,
        class_names=list(iteration.class_names),
        output_name=_name(round_, "labelled"),
        labellers=list(options.get("labellers") or []),
        prediction_set_id=pset.pk if pset and options.get("pre_annotations", True) else None,
        base_url=str(options.get("base_url") or settings.YMIR_PUBLIC_URL or "http://127.0.0.1:8000"),
    )


def oracle_label(round_: Round) -> DatasetVersion:
    """Tests and benchmarks: the picked images labelled from the hidden ground truth, at once."""
    if not oracle_enabled():
        raise Invalid(_("The oracle labeller is a test tool and is off here."), code="oracle_off")
    iteration = round_.iteration
    assert round_.picked is not None and iteration.oracle_version_id is not None
    group = DatasetGroup.objects.create(project_id=iteration.project_id, name=_name(round_, "labelled"))
    version = DatasetVersion.objects.create(group=group, number=1, parameters={"oracle": iteration.oracle_version_id})
    version.parents.set([round_.picked])
    picked = list(DatasetAsset.objects.filter(version=round_.picked).values_list("asset_id", flat=True))
    copy_selected(iteration.oracle_version_id, version.pk, picked)
    Box.objects.filter(version=version, prediction_set__isnull=False).delete()
    targets = set(resolve_keywords(iteration.class_names).values())
    Box.objects.filter(version=version).exclude(label_id__in=targets).delete()
    version.prediction_sets.all().delete()
    version_finish(version, {"operation": "oracle labelling", "images": len(picked)})
    return version


def labelled_of(round_: Round) -> DatasetVersion | None:
    """What the labelling step produced so far: its latest import (also of a cancelled labelling)."""
    if round_.labelled is not None:
        return round_.labelled
    labelling = round_.labelling
    if labelling is None or labelling.output_group_id is None:
        return None
    return DatasetVersion.objects.filter(group_id=labelling.output_group_id, state="ready").order_by("-number").first()


def _start_merge(user: User, round_: Round) -> None:
    labelled = labelled_of(round_)
    if labelled is None and round_.labelling is not None:
        from datasets.labelling import labelling_collect

        labelled = labelling_collect(round_.labelling.pk)  # what is labelled so far, even if cancelled
    if labelled is None:
        raise Conflict(_("Nothing is labelled yet."), code="nothing_labelled")
    if round_.labelling is not None and round_.labelling.task.state == State.RUNNING:
        from datasets.labelling import labelling_cancel

        labelling_cancel(round_.labelling)  # merged: the rest of that labelling is no longer waited for
    round_.labelled = labelled
    (round_.merged,) = operation_start(
        project=round_.iteration.project,
        user=user,
        kind="merge",
        name=_name(round_, "train"),
        params={"inputs": [round_.base_train.pk, labelled.pk], "strategy": "newer"},
    )


def _start_train(user: User, round_: Round, values: dict[str, Any], options: dict[str, Any]) -> None:
    iteration = round_.iteration
    train = round_.merged or round_.base_train
    config = dict(options.get("training_config") or values["training_config"])
    pretrained = round_.base_stage if options.get("pretrained", True) else None
    round_.training_task = training_start(
        user=user,
        project=iteration.project,
        image=iteration.training_image,
        train=train,
        val=iteration.val_version,
        class_names=list(iteration.class_names),
        overlap="drop_train",
        pretrained=pretrained if pretrained and pretrained.version.image_id == iteration.training_image_id else None,
        config=config,
        model_name=f"{iteration.name}{'-random' if round_.arm == Round.Arm.RANDOM else ''}",
    )
    round_.settings = {**round_.settings, "training_config": config, "pretrained": bool(pretrained)}


def step_skip(*, user: User, round_id: int, step: str) -> Round:
    """Skip a step not started yet (a skipped label also skips the merge: nothing new to merge)."""
    if step not in STEPS:
        raise Invalid(_("Unknown step."), code="invalid_step")
    with transaction.atomic():
        round_ = Round.objects.select_for_update(of=("self",)).select_related("iteration").get(pk=round_id)
        if round_.iteration.user_id != user.pk:
            raise Invalid(_("Only the one who set up this loop runs its steps."), code="not_your_project")
        if step_states(round_)[step] != "todo" or round_.finished_at is not None:
            raise Conflict(_("This step has already started."), code="step_started")
        skipped = [*round_.skipped, step]
        if step in ("mine", "label"):
            skipped += [s for s in STEPS[STEPS.index(step) + 1 : 4] if s not in skipped]
        if step == "train":
            round_.finished_at = timezone.now()
        round_.skipped = list(dict.fromkeys(skipped))
        round_.save(update_fields=["skipped", "finished_at"])
    if step == "train":
        _after_round(round_)
    return round_


def step_rerun(*, user: User, round_id: int, step: str) -> Round:
    """Run a finished (or failed) step again: allowed while the next step has not started."""
    with transaction.atomic():
        round_ = Round.objects.select_for_update(of=("self",)).select_related("iteration").get(pk=round_id)
        if round_.iteration.user_id != user.pk:
            raise Invalid(_("Only the one who set up this loop runs its steps."), code="not_your_project")
        states = step_states(round_)
        index = STEPS.index(step)
        later = [s for s in STEPS[index + 1 :] if states[s] not in ("todo", "skipped")]
        if states[step] not in ("done", "error", "skipped") or later or round_.finished_at is not None:
            raise Conflict(_("Only a finished step whose next step has not started runs again."), code="step_busy")
        fields = {
            "prepare": ["prepared"],
            "mine": ["picked", "pick_task"],
            "label": ["labelling", "labelled"],
            "merge": ["merged"],
            "train": ["training_task", "model", "best_stage"],
        }[step]
        for field in fields:
            setattr(round_, field, None)
        round_.skipped = [s for s in round_.skipped if STEPS.index(s) < index]
        round_.save()
    return round_


# --- the driver ----------------------------------------------------------------------------------------


def iteration_advance(iteration_id: int) -> None:
    """Move what needs nobody: picks and trainings that landed, stage and test evaluations, finished rounds,
    the random control's steps. Idempotent; safe to call from pages, the API and the beat."""
    iteration = Iteration.objects.filter(pk=iteration_id).first()
    if iteration is None or iteration.state != Iteration.State.ITERATING:
        return
    for round_ in list(iteration.rounds.filter(finished_at__isnull=True).order_by("number", "arm")):
        try:
            _advance_round(round_.pk)
        except (Invalid, Conflict) as exc:
            Round.objects.filter(pk=round_.pk).update(message=exc.message)
            logger.warning("iteration %s round %s: %s", iteration.pk, round_.pk, exc.message)


def _advance_round(round_id: int) -> None:
    with transaction.atomic():
        round_ = (
            Round.objects.select_for_update(of=("self",))
            .select_related("iteration", "pick_task", "training_task")
            .get(pk=round_id)
        )
        if round_.finished_at is not None:
            return
        changed = False
        task = round_.pick_task
        if _chunk_due(round_):  # the prepared pool is ready and larger than a chunk: mine a random chunk of it
            assert round_.prepared is not None
            iteration = round_.iteration
            (round_.prepared,) = operation_start(
                project=iteration.project,
                user=iteration.user,
                kind="sample",
                name=_name(round_, "chunk"),
                params={
                    "inputs": [round_.prepared.pk],
                    "count": iteration.chunk_size,
                    "seed": iteration.seed + round_.number,
                },
            )
            round_.settings = {**round_.settings, "chunked": True}
            changed = True
        if round_.picked is None and task is not None and task.state == State.DONE:
            landed = (task.result or {}).get("landed", {})
            round_.picked = DatasetVersion.objects.filter(pk=landed.get("dataset_version") or 0).first()
            changed = True
            if round_.picked is not None and round_.picked.asset_count == 0:
                round_.skipped = [*round_.skipped, "label", "merge"]
                round_.message = _("Mining returned nothing: the round goes on with training.")
        if round_.labelled is None and round_.labelling is not None and round_.labelling.task.state == State.DONE:
            round_.labelled = labelled_of(round_)
            changed = changed or round_.labelled is not None
        task = round_.training_task
        if round_.model is None and task is not None and task.state == State.DONE:
            landed = (task.result or {}).get("landed", {})
            round_.model = ModelVersion.objects.filter(pk=landed.get("model_version") or 0).first()
            changed = True
        if round_.model is not None and round_.best_stage is None:
            changed = _choose_best_stage(round_) or changed
        if round_.best_stage is not None:
            changed = _test_evaluations(round_) or changed
        if changed:
            round_.save()
    if round_.arm == Round.Arm.RANDOM:
        _auto_random(round_)
    elif round_.finished_at is not None:
        _after_round(round_)


def _chunk_due(round_: Round) -> bool:
    iteration = round_.iteration
    prepared = round_.prepared
    return bool(
        iteration.chunk_size
        and prepared is not None
        and prepared.state == DatasetVersion.State.READY
        and prepared.asset_count > iteration.chunk_size
        and not round_.settings.get("chunked")
        and round_.arm == Round.Arm.MINED
    )


def _choose_best_stage(round_: Round) -> bool:
    """The stage with the best platform mAP on the validation set, once every stage's evaluation has ended
    (submitted when the training landed: an inference run on the validation set, then an evaluation)."""
    from models_app.training import infer_image_for

    model = round_.model
    assert model is not None
    stages = list(model.stages.all())
    if not stages:
        return False
    expected = model.val_version_id is not None and model.image is not None and infer_image_for(model.image) is not None
    waited = (timezone.now() - model.created_at).total_seconds()
    if expected and waited < settings.YMIR_TASK_STALE_SECONDS * 12:  # a lost evaluation is given up after an hour
        from models_app.models import Evaluation

        for stage in stages:
            if stage.metrics.get("AP") is not None:
                continue
            runs = list(Task.objects.filter(kind=Task.Kind.INFERENCE, parameters__evaluate_stage=stage.pk))
            if not runs or any(not run.is_final for run in runs):
                return False  # not submitted yet, or still running
            for run in runs:
                pset_id = (run.result or {}).get("landed", {}).get("prediction_set")
                if run.state != State.DONE or not pset_id:
                    continue  # that run failed: no number will come from it
                evaluation = Evaluation.objects.filter(prediction_sets=pset_id).select_related("task").first()
                if evaluation is None or evaluation.task is None or not evaluation.task.is_final:
                    return False  # inferred; its evaluation is still to come (or to be written)
            stage.refresh_from_db(fields=["metrics"])
    scored = [s for s in stages if s.metrics.get("AP") is not None]
    if not scored:
        best = next((s for s in stages if s.name == model.recommended_stage), stages[-1])
        logger.warning(
            "round %s: no platform evaluation of model %s; its recommended stage is used", round_.pk, model.pk
        )
        round_.metrics = {**round_.metrics, "val": None, "note": "no platform evaluation"}
    else:
        best = max(scored, key=lambda s: s.metrics["AP"])
        round_.metrics = {**round_.metrics, "val": best.metrics["AP"], "val50": best.metrics.get("AP50")}
    round_.best_stage = best
    return True


def _test_evaluations(round_: Round) -> bool:
    """Run the best stage on each test set, then evaluate; the round finishes when all are in."""
    from models_app.evaluations import evaluation_create

    iteration = round_.iteration
    tests = list(iteration.test_versions.all())
    started = round_.settings.get("test_tasks")
    if tests and started is None:
        assert round_.best_stage is not None
        tasks = inference_start(user=iteration.user, stages=[round_.best_stage], versions=tests)
        round_.settings = {
            **round_.settings,
            "test_tasks": {str(v.pk): t.pk for v, t in zip(tests, tasks, strict=True)},
        }
        return True
    results = dict(round_.metrics.get("tests") or {})
    for version_id, task_id in (started or {}).items():
        if version_id in results:
            continue
        task = Task.objects.get(pk=task_id)
        if not task.is_final:
            return False
        pset_id = (task.result or {}).get("landed", {}).get("prediction_set")
        version = DatasetVersion.objects.get(pk=int(version_id))
        if task.state != State.DONE or not pset_id or not version.gt_box_count:
            results[version_id] = None
            continue
        from datasets.models import PredictionSet

        evaluation = evaluation_create(
            user=iteration.user, version=version, prediction_sets=[PredictionSet.objects.get(pk=pset_id)], run_now=True
        )
        stats = (evaluation.result.get("sets") or [{}])[0].get("stats", {})
        results[version_id] = stats.get("AP")
    round_.metrics = {**round_.metrics, "tests": results}
    round_.finished_at = timezone.now()
    return True


def _after_round(round_: Round) -> None:
    """Once every arm of a round finished: open the next round, or finish the loop."""
    iteration = Iteration.objects.get(pk=round_.iteration_id)
    with transaction.atomic():
        iteration = Iteration.objects.select_for_update().get(pk=iteration.pk)
        if iteration.state != Iteration.State.ITERATING:
            return
        this_round = iteration.rounds.filter(number=round_.number)
        if (
            this_round.filter(finished_at__isnull=True).exists()
            or iteration.rounds.filter(number=round_.number + 1).exists()
        ):
            return
        mined = this_round.get(arm=Round.Arm.MINED)
        reached = iteration.target_map is not None and (mined.metrics.get("val") or 0) >= iteration.target_map
        enough = iteration.max_rounds is not None and round_.number >= iteration.max_rounds
        if reached or enough:
            iteration.state = Iteration.State.FINISHED
            iteration.save(update_fields=["state"])
            return
        _open_round(
            iteration, round_.number + 1, mined.merged or mined.base_train, mined.best_stage or mined.base_stage
        )


def _auto_random(round_: Round) -> None:
    """The random control runs by itself: sample as many as the mined arm picked, label, merge, train."""
    if round_.finished_at is not None:
        _after_round(round_)
        return
    mined = Round.objects.filter(iteration_id=round_.iteration_id, number=round_.number, arm=Round.Arm.MINED).first()
    if mined is None:
        return
    mined_states = step_states(mined)
    if mined_states["prepare"] not in ("done", "skipped"):
        return
    user = round_.iteration.user
    for step in ("mine", "label", "merge", "train"):
        ok, _why = can_start(Round.objects.get(pk=round_.pk), step)
        if not ok:
            continue
        if step == "mine" and mined_states["mine"] not in ("done", "skipped"):
            return  # the same count as the mined arm picks
        try:
            step_start(user=user, round_id=round_.pk, step=step)
        except Conflict:
            return


def auto_mined(iteration_id: int, options: dict[str, Any] | None = None) -> list[str]:
    """Start every step of the mined arm that may start now, with the prefilled values (the benchmark's and
    the tests' hands-off mode); answers the steps started."""
    started = []
    iteration = Iteration.objects.get(pk=iteration_id)
    for round_ in iteration.rounds.filter(arm=Round.Arm.MINED, finished_at__isnull=True):
        for step in STEPS:
            round_.refresh_from_db()
            if can_start(round_, step)[0]:
                step_start(user=iteration.user, round_id=round_.pk, step=step, options=options)
                started.append(f"r{round_.number}:{step}")
    return started


def iteration_finish(iteration: Iteration) -> None:
    Iteration.objects.filter(pk=iteration.pk).update(state=Iteration.State.FINISHED)


def iteration_update(*, user: User, iteration: Iteration, changes: dict[str, Any]) -> Iteration:
    """Change the loop's settings between rounds; the validation set is fixed while iterating."""
    if iteration.user_id != user.pk:
        raise Invalid(_("Only the one who set up this loop changes it."), code="not_your_project")
    new_val = getattr(changes.get("val_version"), "pk", changes.get("val_version"))
    if (
        "val_version" in changes
        and iteration.state == Iteration.State.ITERATING
        and new_val != iteration.val_version_id
    ):
        raise Conflict(_("The validation set is fixed while iterating: finish the loop first."), code="val_fixed")
    allowed = {
        "top_k",
        "strategy",
        "class_balance",
        "diversity",
        "training_config",
        "mining_config",
        "target_map",
        "max_rounds",
        "exclude_seen",
    }
    unknown = set(changes) - allowed - {"val_version"}
    switches = [k for k in ("class_balance", "diversity", "exclude_seen") if k in changes]
    if any(not isinstance(changes[k], bool) for k in switches):
        raise Invalid(
            _("These settings are on or off: %(names)s") % {"names": ", ".join(switches)}, code="invalid_setting"
        )
    if unknown:
        raise Invalid(
            _("These settings cannot change: %(names)s") % {"names": ", ".join(sorted(unknown))}, code="invalid_setting"
        )
    for key, value in changes.items():
        if key in allowed:
            setattr(iteration, key, value)
    if iteration.strategy not in STRATEGIES or iteration.top_k < 1:
        raise Invalid(_("Unknown mining strategy."), code="invalid_strategy")
    iteration.save()
    return iteration


def versions_in_use(version_id: int) -> bool:
    """A dataset a loop relies on (its sets, or a round's inputs and outputs: the history) cannot be deleted."""
    from django.db.models import Q

    active = Iteration.objects.all()

    if active.filter(
        Q(train_version_id=version_id)
        | Q(pool_version_id=version_id)
        | Q(val_version_id=version_id)
        | Q(test_versions__id=version_id)
    ).exists():
        return True
    fields = ("base_train", "prepared", "picked", "labelled", "merged")
    query = Q()
    for field in fields:
        query |= Q(**{f"{field}_id": version_id})
    return Round.objects.filter(iteration__in=active).filter(query).exists()


def history(iteration: Iteration) -> list[dict[str, Any]]:
    """One row per round and arm: training-set size, picked, labelled boxes, model, mAP, delta, duration."""
    rows = []
    previous: dict[str, float | None] = {}
    for round_ in iteration.rounds.select_related(
        "best_stage__version__group", "labelled", "base_train", "merged", "picked"
    ):
        val = round_.metrics.get("val")
        before = previous.get(round_.arm)
        train = round_.merged or round_.base_train
        end = round_.finished_at
        rows.append(
            {
                "round": round_,
                "train_size": train.asset_count,
                "picked": round_.picked.asset_count if round_.picked else None,
                "labelled_boxes": round_.labelled.gt_box_count if round_.labelled else None,
                "model": round_.best_stage,
                "val": val,
                "val50": round_.metrics.get("val50"),
                "tests": round_.metrics.get("tests") or {},
                "delta": (val - before) if val is not None and before is not None else None,
                "duration": (end - round_.created_at).total_seconds() if end else None,
            }
        )
        if val is not None:
            previous[round_.arm] = val
    return rows


def uplift(iteration: Iteration) -> dict[int, float]:
    """Per round: the mined arm's mAP minus the random control's (both on the validation set)."""
    by = {(r.number, r.arm): r.metrics.get("val") for r in iteration.rounds.all()}
    return {
        n: by[(n, "mined")] - by[(n, "random")]
        for (n, arm) in by
        if arm == "random" and by.get((n, "mined")) is not None and by[(n, "random")] is not None
    }
