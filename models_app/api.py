from __future__ import annotations

import tempfile
from datetime import datetime

from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from ninja import File, Form, Router, Schema, UploadedFile

from core.errors import Conflict, Invalid, NotFound
from core.models import User
from datasets.models import PredictionSet
from datasets.selectors import version_visible_to
from models_app.conformance import conformance_start
from models_app.contract import LOG_FILE
from models_app.errors import error_meaning
from models_app.evaluations import evaluation_create
from models_app.executors import image_add
from models_app.jobs import cancel, queue_position
from models_app.models import Evaluation, ExecutorImage, ModelStage, ModelVersion, Task
from models_app.packages import class_list, export_package, import_package
from models_app.selectors import evaluation_visible_to, images_usable_by, model_visible_to, stages_of
from models_app.taskdir import task_dir
from models_app.training import inference_start, mining_start, training_start
from models_app.views import tasks_visible_to
from projects.models import Project

router = Router(tags=["tasks"])


class TaskOut(Schema):
    id: int
    kind: str
    state: str
    percent: float
    project_id: int | None
    error_code: str
    error: str
    error_meaning: str
    image_id: int | None
    host: str
    gpu_ids: str
    queue_position: int | None
    config: dict
    result: dict
    log_tail: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_error(obj: Task) -> str:
        return obj.error_message

    @staticmethod
    def resolve_error_meaning(obj: Task) -> str:
        return error_meaning(obj.error_code) if obj.error_code else ""

    @staticmethod
    def resolve_queue_position(obj: Task) -> int | None:
        return queue_position(obj)


@router.get("/tasks", response=list[TaskOut])
def task_list(
    request: HttpRequest, state: Task.State | None = None, kind: Task.Kind | None = None, project: int | None = None
) -> list[Task]:
    tasks = tasks_visible_to(request.user)  # type: ignore[arg-type]
    if project:
        tasks = tasks.filter(project_id=project)
    if state:
        tasks = tasks.filter(state=state)
    if kind:
        tasks = tasks.filter(kind=kind)
    return list(tasks.order_by("-created_at")[:200])


@router.get("/tasks/{task_id}", response=TaskOut)
def task_get(request: HttpRequest, task_id: int) -> Task:
    return get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]


@router.post("/tasks/{task_id}/cancel", response={202: TaskOut})
def task_cancel(request: HttpRequest, task_id: int) -> tuple[int, Task]:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    if not cancel(task):
        raise Conflict(_("This task has already ended."), code="task_final")
    task.refresh_from_db()
    return 202, task


@router.get("/tasks/{task_id}/log")
def task_log(request: HttpRequest, task_id: int) -> FileResponse:
    task = get_object_or_404(tasks_visible_to(request.user), pk=task_id)  # type: ignore[arg-type]
    path = task_dir(task.pk) / "out" / LOG_FILE
    if not path.is_file():
        raise NotFound(_("This task has no log."), code="no_log")
    return FileResponse(path.open("rb"), filename=f"task-{task.pk}.log", content_type="text/plain")


class ExecutorOut(Schema):
    id: int
    name: str
    kind: str
    reference: str
    state: str
    task_types: list[str]
    templates: dict
    is_shared: bool
    error_message: str
    conformance: dict


class ExecutorIn(Schema):
    name: str
    reference: str
    description: str = ""


@router.get("/executors", response=list[ExecutorOut])
def executor_list(request: HttpRequest) -> list[ExecutorImage]:
    user = request.user
    images = ExecutorImage.objects.all()
    return list(images if user.is_platform_admin else images.filter(is_shared=True))  # type: ignore[union-attr]


@router.post("/executors", response={202: ExecutorOut})
def executor_add(request: HttpRequest, body: ExecutorIn) -> tuple[int, ExecutorImage]:
    return 202, image_add(user=request.user, name=body.name, reference=body.reference, description=body.description)  # type: ignore[arg-type]


class ConformanceIn(Schema):
    gpu_count: int = 0


@router.post("/executors/{image_id}/conformance", response={202: TaskOut})
def executor_conformance(request: HttpRequest, image_id: int, body: ConformanceIn) -> tuple[int, Task]:
    """Admins: run the image through a tiny training, mining and inference job; the report lands on the image."""
    if not request.user.is_platform_admin:  # type: ignore[union-attr]
        raise NotFound(_("No such executor."), code="not_found")
    image = ExecutorImage.objects.filter(pk=image_id).first()
    if image is None:
        raise NotFound(_("No such executor."), code="not_found")
    return 202, conformance_start(user=request.user, image=image, gpu_count=body.gpu_count)  # type: ignore[arg-type]


# --- evaluations -------------------------------------------------------------------------------------------


class EvaluationIn(Schema):
    version_id: int
    prediction_set_ids: list[int]
    ious: str | float | list[float] = "0.5:0.95"
    score_threshold: float = 0.0
    max_dets: list[int] = [1, 10, 100]


class EvaluationOut(Schema):
    id: int
    version_id: int
    prediction_set_ids: list[int]
    parameters: dict
    state: str
    task_id: int | None
    result: dict
    created_at: datetime

    @staticmethod
    def resolve_prediction_set_ids(obj: Evaluation) -> list[int]:
        return sorted(obj.prediction_sets.values_list("pk", flat=True))

    @staticmethod
    def resolve_state(obj: Evaluation) -> str:
        return obj.task.state if obj.task else Task.State.DONE


@router.post("/evaluations", response={201: EvaluationOut}, tags=["models"])
def evaluation_post(request: HttpRequest, body: EvaluationIn) -> tuple[int, Evaluation]:
    """Evaluate a ground-truth dataset version against prediction sets on it (computed now, stored): all 12
    COCO numbers, per-class AP, precision/recall and PR curves, confusion, and with several sets a bootstrap
    interval for each set's mAP difference to the best."""
    version = version_visible_to(request.user, body.version_id)  # type: ignore[arg-type]
    sets = list(PredictionSet.objects.filter(pk__in=body.prediction_set_ids))
    if len(sets) != len(set(body.prediction_set_ids)):
        raise Invalid(_("Prediction sets must belong to the dataset evaluated."), code="invalid_prediction_set")
    evaluation = evaluation_create(
        user=request.user,  # type: ignore[arg-type]
        version=version,
        prediction_sets=sets,
        ious=body.ious,
        score_threshold=body.score_threshold,
        max_dets=body.max_dets,
        run_now=True,
    )
    return 201, evaluation


@router.get("/evaluations/{evaluation_id}", response=EvaluationOut, tags=["models"])
def evaluation_get(request: HttpRequest, evaluation_id: int) -> Evaluation:
    return evaluation_visible_to(request.user, evaluation_id)  # type: ignore[arg-type]


# --- models, training, mining, inference ----------------------------------------------------------------


class StageOut(Schema):
    id: int
    name: str
    files: list[str]
    reported_map: float | None
    metrics: dict


class ModelOut(Schema):
    id: int
    group_id: int
    name: str
    number: int
    project_id: int
    image_id: int | None
    task_id: int | None
    train_version_id: int | None
    val_version_id: int | None
    class_names: list[str]
    config: dict
    recommended_stage: str
    stages: list[StageOut]
    created_at: datetime

    @staticmethod
    def resolve_name(obj: ModelVersion) -> str:
        return obj.group.name

    @staticmethod
    def resolve_project_id(obj: ModelVersion) -> int:
        return obj.group.project_id

    @staticmethod
    def resolve_stages(obj: ModelVersion) -> list[ModelStage]:
        return list(obj.stages.all())


@router.get("/models/{model_id}", response=ModelOut, tags=["models"])
def model_get(request: HttpRequest, model_id: int) -> ModelVersion:
    """A model version with its stages: the platform's metrics (``metrics``) and the image's own number."""
    return model_visible_to(request.user, model_id)  # type: ignore[arg-type]


class TrainingIn(Schema):
    image_id: int
    train_version_id: int
    val_version_id: int
    class_names: list[str]
    overlap: str = "stop"
    pretrained_stage_id: int | None = None
    gpu_count: int = 0
    config: dict = {}
    model_name: str = ""


def _project_of(request: HttpRequest, project_id: int) -> Project:
    project = Project.objects.filter(pk=project_id, owner=request.user).first()  # type: ignore[misc]
    if project is None:
        raise NotFound(_("No such project."), code="not_found")
    return project


def _image(image_id: int, user: User) -> ExecutorImage:
    image = images_usable_by(user).filter(pk=image_id).first()
    if image is None:
        raise NotFound(_("No such executor."), code="not_found")
    return image


def _stage(user: User, stage_id: int | None) -> ModelStage | None:
    if stage_id is None:
        return None
    stage = stages_of(user).filter(pk=stage_id).first()
    if stage is None:
        raise NotFound(_("No such model stage."), code="not_found")
    return stage


@router.post("/projects/{project_id}/trainings", response={202: TaskOut}, tags=["models"])
def training_post(request: HttpRequest, project_id: int, body: TrainingIn) -> tuple[int, Task]:
    """Train: a task that lands as a new version of the model group ``model_name``; each stage is then
    inferred on the validation set and evaluated by the platform."""
    user: User = request.user  # type: ignore[assignment]
    project = _project_of(request, project_id)
    task = training_start(
        user=user,
        project=project,
        image=_image(body.image_id, user),
        train=version_visible_to(user, body.train_version_id),
        val=version_visible_to(user, body.val_version_id),
        class_names=body.class_names,
        overlap=body.overlap,
        pretrained=_stage(user, body.pretrained_stage_id),
        gpu_count=body.gpu_count,
        config=body.config,
        model_name=body.model_name,
    )
    return 202, task


class MiningIn(Schema):
    image_id: int
    candidates_version_id: int
    stage_id: int
    top_k: int
    also_infer: bool = False
    exclude_labelled: bool = False
    exclude_mined: bool = False
    class_balance: bool = False
    diversity: bool = False
    gpu_count: int = 0
    config: dict = {}
    output_name: str = ""


@router.post("/projects/{project_id}/minings", response={202: TaskOut}, tags=["models"])
def mining_post(request: HttpRequest, project_id: int, body: MiningIn) -> tuple[int, Task]:
    """Mine: the top-k images of the pool become a new dataset (with the predictions if ``also_infer``)."""
    user: User = request.user  # type: ignore[assignment]
    stage = _stage(user, body.stage_id)
    assert stage is not None
    task = mining_start(
        user=user,
        project=_project_of(request, project_id),
        image=_image(body.image_id, user),
        candidates=version_visible_to(user, body.candidates_version_id),
        stage=stage,
        top_k=body.top_k,
        also_infer=body.also_infer,
        exclude_labelled=body.exclude_labelled,
        exclude_mined=body.exclude_mined,
        class_balance=body.class_balance,
        diversity=body.diversity,
        gpu_count=body.gpu_count,
        config=body.config,
        output_name=body.output_name,
    )
    return 202, task


class InferenceIn(Schema):
    stage_ids: list[int]
    version_ids: list[int]
    gpu_count: int = 0
    config: dict = {}


@router.post("/inferences", response={202: list[TaskOut]}, tags=["models"])
def inference_post(request: HttpRequest, body: InferenceIn) -> tuple[int, list[Task]]:
    """Infer: one task per (model stage, dataset); each lands as a prediction set on its dataset."""
    user: User = request.user  # type: ignore[assignment]
    stages = [s for s in (_stage(user, i) for i in body.stage_ids) if s is not None]
    versions = [version_visible_to(user, i) for i in body.version_ids]
    return 202, inference_start(
        user=user, stages=stages, versions=versions, gpu_count=body.gpu_count, config=body.config
    )


@router.post("/projects/{project_id}/models", response={201: ModelOut}, tags=["models"])
def model_import_post(
    request: HttpRequest,
    project_id: int,
    package: File[UploadedFile],
    name: Form[str] = "",
    image_id: Form[int | None] = None,
    class_names: Form[str] = "",
) -> tuple[int, ModelVersion]:
    """Import a model: YMIR's package (tar.gz with ymir-info.yaml) or an ONNX graph (classes from its metadata,
    or ``class_names``, one per line or a JSON list)."""
    user: User = request.user  # type: ignore[assignment]
    project = _project_of(request, project_id)
    version = import_package(
        project=project,
        upload=package,
        filename=package.name or "",
        name=name,
        image=_image(image_id, user) if image_id else None,
        class_names=class_list(class_names),
    )
    return 201, model_visible_to(user, version.pk)


@router.get("/models/{model_id}/package", tags=["models"])
def model_package_get(request: HttpRequest, model_id: int) -> FileResponse:
    """The model as YMIR's package (tar.gz with ymir-info.yaml and one folder per stage)."""
    version = model_visible_to(request.user, model_id)  # type: ignore[arg-type]
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it once sent)
    export_package(version, spool)
    spool.seek(0)
    name = f"{version.group.name}-v{version.number}.tar.gz"
    return FileResponse(spool, as_attachment=True, filename=name, content_type="application/gzip")
