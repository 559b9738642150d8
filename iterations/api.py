"""The iterations API: set up a loop, run its steps, read its rounds and history."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema
from pydantic import Field

from core.models import User
from datasets.models import DatasetVersion
from datasets.selectors import version_visible_to
from iterations import services as loop
from iterations.models import Iteration, Round
from models_app.models import ExecutorImage, ModelStage
from projects.selectors import project_for

router = Router(tags=["iterations"])


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


class IterationIn(Schema):
    name: str = Field("loop", max_length=60)
    train_version_id: int | None = None
    pool_version_id: int | None = None
    val_version_id: int | None = None
    test_version_ids: list[int] = []
    initial_stage_id: int | None = None
    training_image_id: int | None = None
    mining_image_id: int | None = None
    class_names: list[str] = []
    strategy: str = "entropy"
    exclude_seen: bool = True
    chunk_size: int = Field(0, ge=0)
    top_k: int = Field(20, ge=1)
    class_balance: bool = False
    diversity: bool = False
    training_config: dict[str, Any] = {}
    mining_config: dict[str, Any] = {}
    target_map: float | None = None
    max_rounds: int | None = None
    random_control: bool = False
    seed: int = 0


class IterationPatch(Schema):
    val_version_id: int | None = None
    top_k: int | None = Field(None, ge=1)
    strategy: str | None = None
    class_balance: bool | None = None
    diversity: bool | None = None
    training_config: dict[str, Any] | None = None
    target_map: float | None = None
    max_rounds: int | None = None


class RoundOut(Schema):
    id: int
    number: int
    arm: str
    steps: dict[str, str]
    base_train_id: int
    prepared_id: int | None
    picked_id: int | None
    labelling_id: int | None
    labelled_id: int | None
    merged_id: int | None
    training_task_id: int | None
    model_id: int | None
    best_stage_id: int | None
    metrics: dict[str, Any]
    message: str
    finished_at: datetime | None

    @staticmethod
    def resolve_steps(obj: Round) -> dict[str, str]:
        return loop.step_states(obj)


class IterationOut(Schema):
    id: int
    project_id: int
    name: str
    state: str
    train_version_id: int
    pool_version_id: int
    val_version_id: int
    strategy: str
    top_k: int
    class_balance: bool
    diversity: bool
    random_control: bool
    rounds: list[RoundOut]
    uplift: dict[int, float]

    @staticmethod
    def resolve_rounds(obj: Iteration) -> list[Round]:
        return list(obj.rounds.select_related("labelling__task", "picked", "prepared", "labelled", "merged"))

    @staticmethod
    def resolve_uplift(obj: Iteration) -> dict[int, float]:
        return loop.uplift(obj)


class StepIn(Schema):
    action: str = Field("start", pattern="^(start|skip|rerun)$")
    top_k: int | None = Field(None, ge=1)
    strategy: str | None = None
    class_balance: bool | None = None
    diversity: bool | None = None
    pretrained: bool = True
    labellers: list[str] = []


def _version(request: HttpRequest, version_id: int | None) -> DatasetVersion | None:
    return version_visible_to(_user(request), version_id) if version_id else None


def _image(image_id: int | None) -> ExecutorImage | None:
    return get_object_or_404(ExecutorImage, pk=image_id) if image_id else None


def _mine(request: HttpRequest, iteration_id: int) -> Iteration:
    return get_object_or_404(Iteration, pk=iteration_id, project__owner=_user(request))


@router.post("/projects/{project_id}/iterations", response={201: IterationOut})
def iteration_create(request: HttpRequest, project_id: int, body: IterationIn) -> tuple[int, Iteration]:
    project = project_for(_user(request), project_id)
    stage = get_object_or_404(ModelStage, pk=body.initial_stage_id) if body.initial_stage_id else None
    iteration = loop.iteration_create(
        user=_user(request),
        project=project,
        name=body.name,
        train_version=_version(request, body.train_version_id),
        pool_version=_version(request, body.pool_version_id),
        val_version=_version(request, body.val_version_id),
        test_versions=[v for v in (_version(request, i) for i in body.test_version_ids) if v is not None],
        initial_stage=stage,
        training_image=_image(body.training_image_id),
        mining_image=_image(body.mining_image_id),
        class_names=body.class_names,
        strategy=body.strategy,
        exclude_seen=body.exclude_seen,
        chunk_size=body.chunk_size,
        top_k=body.top_k,
        class_balance=body.class_balance,
        diversity=body.diversity,
        training_config=body.training_config,
        mining_config=body.mining_config,
        target_map=body.target_map,
        max_rounds=body.max_rounds,
        random_control=body.random_control,
        seed=body.seed,
    )
    return 201, iteration


@router.get("/iterations/{iteration_id}", response=IterationOut)
def iteration_get(request: HttpRequest, iteration_id: int) -> Iteration:
    iteration = _mine(request, iteration_id)
    loop.iteration_advance(iteration.pk)
    iteration.refresh_from_db()
    return iteration


@router.patch("/iterations/{iteration_id}", response=IterationOut)
def iteration_patch(request: HttpRequest, iteration_id: int, body: IterationPatch) -> Iteration:
    iteration = _mine(request, iteration_id)
    changes = body.dict(exclude_unset=True)
    if "val_version_id" in changes:
        changes["val_version"] = changes.pop("val_version_id")
    return loop.iteration_update(user=_user(request), iteration=iteration, changes=changes)


@router.post("/iterations/{iteration_id}/rounds/{round_id}/steps/{step}", response={202: RoundOut})
def round_step(request: HttpRequest, iteration_id: int, round_id: int, step: str, body: StepIn) -> tuple[int, Round]:
    iteration = _mine(request, iteration_id)
    round_ = get_object_or_404(Round, pk=round_id, iteration=iteration)
    if body.action == "skip":
        loop.step_skip(user=_user(request), round_id=round_.pk, step=step)
    elif body.action == "rerun":
        loop.step_rerun(user=_user(request), round_id=round_.pk, step=step)
    else:
        options: dict[str, Any] = {"pretrained": body.pretrained, "labellers": body.labellers}
        options["base_url"] = request.build_absolute_uri("/").rstrip("/")
        if body.top_k:
            options["top_k"] = body.top_k
        if body.strategy:
            options["strategy"] = body.strategy
        for flag in ("class_balance", "diversity"):
            if getattr(body, flag) is not None:
                options[flag] = getattr(body, flag)
        loop.step_start(user=_user(request), round_id=round_.pk, step=step, options=options)
    return 202, Round.objects.get(pk=round_.pk)


@router.post("/iterations/{iteration_id}/finish", response=IterationOut)
def iteration_finish(request: HttpRequest, iteration_id: int) -> Iteration:
    iteration = _mine(request, iteration_id)
    loop.iteration_finish(iteration)
    iteration.refresh_from_db()
    return iteration
