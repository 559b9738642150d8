from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from core.errors import Conflict, Invalid
from core.models import User
from projects.models import Project


def project_create(*, owner: User, name: str, description: str = "") -> Project:
    name = name.strip()
    if not name:
        raise Invalid(_("A project needs a name."), code="invalid_name")
    try:
        with transaction.atomic():
            return Project.objects.create(owner=owner, name=name, description=description)
    except IntegrityError as exc:
        raise Conflict(_("You already have a project with that name."), code="project_name_taken") from exc


def project_update(*, project: Project, name: str, description: str) -> Project:
    name = name.strip()
    if not name:
        raise Invalid(_("A project needs a name."), code="invalid_name")
    project.name, project.description = name, description
    try:
        with transaction.atomic():
            project.save(update_fields=["name", "description", "updated_at"])
    except IntegrityError as exc:
        raise Conflict(_("You already have a project with that name."), code="project_name_taken") from exc
    return project


def models_remove_files(version_ids: list[int]) -> None:
    import shutil

    from models_app.landing import model_dir

    for pk in version_ids:
        shutil.rmtree(model_dir(pk), ignore_errors=True)


def project_delete(*, project: Project) -> None:
    """Delete a project with its datasets and task history; refused while its data is in use."""
    from datasets.models import DatasetGroup, DatasetVersion
    from models_app.models import Task

    if Task.objects.filter(project=project).exclude(state__in=Task.FINAL_STATES).exists():
        raise Conflict(_("A task of this project is still running."), code="in_use")
    versions = DatasetVersion.objects.filter(group__project=project)
    if versions.filter(is_public=True).exists():
        raise Conflict(_("A dataset of this project is public; make it private first."), code="in_use")
    if (
        DatasetVersion.objects.filter(parents__in=versions)
        .exclude(group__project=project)
        .filter(state=DatasetVersion.State.PENDING)
        .exists()
    ):
        raise Conflict(_("Another project is making a dataset from this one's."), code="in_use")
    from models_app.models import ModelGroup, ModelVersion

    if ModelVersion.objects.filter(train_version__in=versions).exclude(group__project=project).exists():
        raise Conflict(_("A model of another project was trained on this project's data."), code="in_use")
    model_ids = list(ModelVersion.objects.filter(group__project=project).values_list("id", flat=True))
    from datasets.models import Labelling
    from iterations.models import Iteration

    with transaction.atomic():
        Iteration.objects.filter(project=project).delete()  # its rounds refer to the models and datasets below
        Labelling.objects.filter(source__in=versions).delete()
        ModelVersion.objects.filter(pk__in=model_ids).delete()
        ModelGroup.objects.filter(project=project).delete()
        versions.delete()
        DatasetGroup.objects.filter(project=project).delete()
        Task.objects.filter(project=project).delete()
        project.delete()
        transaction.on_commit(lambda: models_remove_files(model_ids))
