"""What users start from the model pages and the API: training, mining and inference runs, checked here
beyond the contract (targets present in the training set, training/validation overlap, a pretrained model of
the same image, typed hyper-parameters), then submitted as executor jobs (``jobs.job_submit``).

After a training run lands, every stage is run on the validation set by an inference task and evaluated by
the platform's evaluator: that mAP, not the one the image reports, is the one shown everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Invalid
from core.models import User
from datasets.classes import resolve_keywords
from datasets.models import DatasetAsset, DatasetVersion
from datasets.operations import overlap_count
from models_app import contract, jobs, landing
from models_app.models import ExecutorImage, ModelStage, ModelVersion, Task
from models_app.services import task_finish
from projects.models import Project

logger = logging.getLogger(__name__)
OVERLAP_POLICIES = ("stop", "drop_val", "drop_train")
HIDDEN_KEYS = {*contract.RESERVED_KEYS, "export_format"}


def editable_template(image: ExecutorImage, task_type: str) -> dict[str, Any]:
    """The template's hyper-parameters a user may set (reserved keys and the export format are the platform's)."""
    return {k: v for k, v in image.templates.get(task_type, {}).items() if k not in HIDDEN_KEYS}


def coerce_config(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Form strings (or API values) to the template's types; a wrong type is an error naming the key."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in values.items():
        if key not in template:
            errors[key] = _("Unknown hyper-parameter.")
            continue
        default = template[key]
        try:
            out[key] = _coerce(default, value)
        except (TypeError, ValueError):
            errors[key] = _("Expected a value of type %(type)s.") % {"type": type(default).__name__}
    if errors:
        raise Invalid(
            _("Some hyper-parameters are invalid: %(keys)s.") % {"keys": ", ".join(sorted(errors))},
            code="invalid_config",
            details=errors,
        )
    return out


def _coerce(default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ValueError(value)
    if isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value) if not isinstance(value, str) else int(value.strip())
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(value)
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    if default is None:
        return value
    if not isinstance(value, type(default)):
        raise TypeError(value)
    return value


def target_counts(version: DatasetVersion, class_names: list[str]) -> list[dict[str, Any]]:
    """Per target class: the images with at least one box of it (positive) and without (negative)."""
    from datasets.models import Box

    ids = resolve_keywords(class_names)
    total = version.asset_count
    out = []
    for name in class_names:
        label = ids.get(" ".join(name.split()).lower())
        positive = (
            Box.objects.filter(version=version, prediction_set__isnull=True, label_id=label)
            .values("asset_id")
            .distinct()
            .count()
            if label
            else 0
        )
        out.append(
            {
                "name": name,
                "positive": positive,
                "negative": total - positive,
                "share": round(positive / total, 4) if total else 0.0,
            }
        )
    return out


def classes_in_ground_truth(version: DatasetVersion) -> list[str]:
    counts = version.class_counts.get("gt", {}) if isinstance(version.class_counts, dict) else {}
    return sorted(name for name, n in counts.items() if n)


def _own_project(user: User, project: Project) -> None:
    if project.owner_id != user.pk:
        raise Invalid(_("You can only run tasks in your own projects."), code="not_your_project")


def training_start(
    *,
    user: User,
    project: Project,
    image: ExecutorImage,
    train: DatasetVersion,
    val: DatasetVersion,
    class_names: list[str],
    overlap: str = "stop",
    pretrained: ModelStage | None = None,
    gpu_count: int = 0,
    config: dict[str, Any] | None = None,
    model_name: str = "",
) -> Task:
    _own_project(user, project)
    if "training" not in image.templates:
        raise Invalid(_("This executor cannot train."), code="unsupported_task_type")
    for version in (train, val):
        if version.group.project_id != project.pk and not version.is_public:
            raise Invalid(_("Datasets must belong to the project or be public."), code="invalid_dataset")
        if version.state == DatasetVersion.State.READY and not version.gt_box_count:
            raise Invalid(
                _("%(name)s has no ground truth: training and validation need annotated datasets.")
                % {"name": f"{version.group.name} v{version.number}"},
                code="not_annotated",
            )
    present = {n.lower() for n in classes_in_ground_truth(train)}
    names = [" ".join(n.split()) for n in class_names if n.strip()]
    if not names:
        raise Invalid(_("Choose at least one class."), code="no_classes")
    ids = resolve_keywords(names)
    present_ids = resolve_keywords(present)
    absent = [n for n in names if ids.get(n.lower()) not in set(present_ids.values())]
    if absent:
        raise Invalid(
            _("The training set has no boxes of: %(names)s.") % {"names": ", ".join(absent)}, code="target_absent"
        )
    if overlap not in OVERLAP_POLICIES:
        raise Invalid(_("Unknown overlap choice."), code="invalid_overlap")
    shared = overlap_count(train.pk, val.pk)
    if shared and overlap == "stop":
        raise Invalid(
            _(
                "%(n)d images are in both the training and the validation set. Choose to drop them from the "
                "validation set or from the training set, or pick other sets."
            )
            % {"n": shared},
            code="overlap",
            details={"overlap": shared},
        )
    if shared and overlap == "drop_train" and shared >= train.asset_count:
        raise Invalid(_("Dropping the overlap would leave no training images."), code="overlap")
    if shared and overlap == "drop_val" and shared >= val.asset_count:
        raise Invalid(_("Dropping the overlap would leave no validation images."), code="overlap")
    if pretrained is not None and pretrained.version.image_id != image.pk:
        raise Invalid(
            _("The pretrained model was trained with another executor image; choose one trained with %(image)s.")
            % {"image": image.name},
            code="pretrained_other_image",
        )
    template = editable_template(image, "training")
    user_config = coerce_config(template, config or {})
    return jobs.job_submit(
        user=user,
        image=image,
        task_type="training",
        class_names=names,
        project=project,
        train=train,
        val=val,
        model_stage=pretrained,
        gpu_count=gpu_count,
        user_config=user_config,
        model_name=model_name or f"{train.group.name}-model",
        extra={"overlap": overlap if shared else "none", "overlap_count": shared},
    )


def infer_image_for(image: ExecutorImage) -> ExecutorImage | None:
    """The image that runs inference for models trained with ``image``: itself, or a related one."""
    if "infer" in image.templates and image.state == ExecutorImage.State.READY:
        return image
    for other in image.related.filter(state=ExecutorImage.State.READY):
        if "infer" in other.templates:
            return other
    return None


def mining_images_for(stage: ModelStage) -> list[ExecutorImage]:
    """Images that can mine, those related to the model's training image first."""
    ready = ExecutorImage.objects.filter(state=ExecutorImage.State.READY)
    images = [i for i in ready if "mining" in i.templates]
    trained_with = stage.version.image
    first = set()
    if trained_with is not None:
        first = {trained_with.pk, *trained_with.related.values_list("pk", flat=True)}
    return sorted(images, key=lambda i: (i.pk not in first, i.name))


def mining_start(
    *,
    user: User,
    project: Project,
    image: ExecutorImage,
    candidates: DatasetVersion,
    stage: ModelStage,
    top_k: int,
    also_infer: bool = False,
    exclude_labelled: bool = False,
    exclude_mined: bool = False,
    class_balance: bool = False,
    diversity: bool = False,
    gpu_count: int = 0,
    config: dict[str, Any] | None = None,
    output_name: str = "",
) -> Task:
    _own_project(user, project)
    if "mining" not in image.templates:
        raise Invalid(_("This executor cannot mine."), code="unsupported_task_type")
    if top_k is None or top_k < 1:
        raise Invalid(_("Top-k must be a positive number of images, for mining."), code="invalid_top_k")
    if class_balance and not also_infer:
        raise Invalid(_("Class balance needs the predictions: also produce pre-annotations."), code="needs_predictions")
    user_config = coerce_config(editable_template(image, "mining"), config or {})
    skip_scoring = top_k >= candidates.asset_count
    with transaction.atomic():
        task = jobs.job_submit(
            user=user,
            image=image,
            task_type="mining",
            class_names=list(stage.version.class_names),
            project=project,
            candidates=candidates,
            model_stage=stage,
            top_k=top_k,
            also_infer=also_infer,
            gpu_count=gpu_count,
            user_config=user_config,
            output_name=output_name,
            extra={
                "exclude_labelled": exclude_labelled,
                "exclude_mined": exclude_mined,
                "skip_scoring": skip_scoring,
                "class_balance": class_balance,
                "diversity": diversity,
            },
            launch=not (skip_scoring and not also_infer),
        )
        if skip_scoring and not also_infer:  # YMIR's rule: top-k covering the pool needs no scoring
            Task.objects.filter(pk=task.pk).update(state=Task.State.RUNNING, started_at=timezone.now())
            result = landing.land_without_run(task)
            Task.objects.filter(pk=task.pk).update(result=result)
            task_finish(task.pk, state=Task.State.DONE)
            task.refresh_from_db()
    return task


def inference_start(
    *,
    user: User,
    stages: list[ModelStage],
    versions: list[DatasetVersion],
    gpu_count: int = 0,
    config: dict[str, Any] | None = None,
) -> list[Task]:
    """One inference task per (model stage, dataset version); each lands as a prediction set on the version."""
    if not stages or not versions:
        raise Invalid(_("Choose at least one model and one dataset."), code="missing_input")
    if len(stages) * len(versions) > 20:
        raise Invalid(_("At most 20 model x dataset pairs at once."), code="too_many")
    tasks = []
    with transaction.atomic():
        for stage in stages:
            project = stage.version.group.project
            _own_project(user, project)
            trained_with = stage.version.image
            image = infer_image_for(trained_with) if trained_with else None
            if image is None:
                raise Invalid(
                    _("No ready executor can run inference for %(model)s.") % {"model": str(stage.version)},
                    code="no_infer_image",
                )
            user_config = coerce_config(editable_template(image, "infer"), config or {})
            for version in versions:
                tasks.append(
                    jobs.job_submit(
                        user=user,
                        image=image,
                        task_type="infer",
                        class_names=list(stage.version.class_names),
                        project=project,
                        candidates=version,
                        model_stage=stage,
                        gpu_count=gpu_count,
                        user_config=user_config,
                    )
                )
    return tasks


def stage_evaluations_submit(version: ModelVersion, training: Task) -> list[Task]:
    """After a training run lands: infer every stage on the validation set; each result is then evaluated
    (``evaluations.evaluation_run`` writes the stage's metrics)."""
    if version.val_version is None or version.image is None:
        return []
    image = infer_image_for(version.image)
    if image is None:
        logger.info("model %s: no inference image, its stages are not evaluated by the platform", version.pk)
        return []
    project = version.group.project
    tasks = []
    for stage in version.stages.all():
        tasks.append(
            jobs.job_submit(
                user=training.user,
                image=image,
                task_type="infer",
                class_names=list(version.class_names),
                project=project,
                candidates=version.val_version,
                model_stage=stage,
                gpu_count=training.gpu_count,
                extra={"evaluate_stage": stage.pk},
            )
        )
    return tasks


def overlap_skip(params: dict[str, Any]) -> tuple[set[int], set[int]]:
    """Assets left out of the training / validation index by the overlap choice."""
    policy = params.get("overlap")
    if policy not in ("drop_val", "drop_train"):
        return set(), set()
    train = set(DatasetAsset.objects.filter(version_id=params["train"]).values_list("asset_id", flat=True))
    val = set(DatasetAsset.objects.filter(version_id=params["val"]).values_list("asset_id", flat=True))
    shared = train & val
    return (shared, set()) if policy == "drop_train" else (set(), shared)


TRY_GROUP = "tried-images"


def try_as_task(*, user: User, stage: ModelStage, data: bytes, filename: str) -> Task:
    """Try a model without an ONNX graph on one image: the image becomes a one-image version of the project's
    "tried-images" dataset and an inference task runs on it; the boxes land there as a prediction set."""
    from django.db.models import Max

    from datasets.models import Asset, DatasetGroup
    from datasets.store import ImageRejected, inspect_image, store_bytes

    project = stage.version.group.project
    _own_project(user, project)
    try:
        info = inspect_image(data)
    except ImageRejected as exc:
        raise Invalid(str(exc), code="invalid_image") from None
    store_bytes(info.sha1, data)
    with transaction.atomic():
        asset, _created = Asset.objects.get_or_create(
            sha1=info.sha1,
            defaults={"width": info.width, "height": info.height, "size_bytes": info.size_bytes, "format": info.format},
        )
        group = DatasetGroup.objects.filter(project=project, name__iexact=TRY_GROUP).first()
        if group is None:
            group = DatasetGroup.objects.create(project=project, name=TRY_GROUP)
        DatasetGroup.objects.select_for_update().filter(pk=group.pk).first()
        number = (group.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        version = DatasetVersion.objects.create(
            group=group,
            number=number,
            state=DatasetVersion.State.READY,
            parameters={"operation": "try", "model_stage": stage.pk},
            asset_count=1,
            ready_at=timezone.now(),
        )
        DatasetAsset.objects.create(version=version, asset=asset, name=filename[:255])
        (task,) = inference_start(user=user, stages=[stage], versions=[version])
    return task
