from __future__ import annotations

from django.db.models import Q, QuerySet
from django.http import Http404

from core.models import User
from datasets.models import DatasetVersion


def versions_visible_to(user: User) -> QuerySet[DatasetVersion]:
    """Versions of the user's own projects, and public ones."""
    return DatasetVersion.objects.filter(Q(group__project__owner=user) | Q(is_public=True)).select_related(
        "group__project", "task"
    )


def version_visible_to(user: User, version_id: int) -> DatasetVersion:
    version = versions_visible_to(user).filter(pk=version_id).first()
    if version is None:
        raise Http404("No such dataset.")
    return version


def versions_of_project(project_id: int) -> QuerySet[DatasetVersion]:
    return (
        DatasetVersion.objects.filter(group__project_id=project_id)
        .select_related("group", "task")
        .order_by("-created_at", "-id")
    )
