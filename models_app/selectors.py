"""Who sees what: models (owners of their project), evaluations (their author, or the dataset's owner),
executor images (admins all, others the shared ones)."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.http import Http404

from core.models import User
from models_app.models import Evaluation, ExecutorImage, ModelStage, ModelVersion


def models_of(user: User) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(group__project__owner=user).select_related(
        "group__project", "task", "image", "train_version__group", "val_version__group"
    )


def model_visible_to(user: User, model_id: int) -> ModelVersion:
    version = models_of(user).filter(pk=model_id).first()
    if version is None:
        raise Http404("No such model.")
    return version


def stages_of(user: User) -> QuerySet[ModelStage]:
    return ModelStage.objects.filter(version__group__project__owner=user).select_related(
        "version__group", "version__image"
    )


def evaluations_of(user: User) -> QuerySet[Evaluation]:
    return Evaluation.objects.filter(Q(user=user) | Q(version__group__project__owner=user)).select_related(
        "version__group__project", "task"
    )


def evaluation_visible_to(user: User, evaluation_id: int) -> Evaluation:
    evaluation = evaluations_of(user).filter(pk=evaluation_id).first()
    if evaluation is None:
        raise Http404("No such evaluation.")
    return evaluation


def images_usable_by(user: User) -> QuerySet[ExecutorImage]:
    images = ExecutorImage.objects.filter(state=ExecutorImage.State.READY)
    return images if user.is_platform_admin else images.filter(is_shared=True)
