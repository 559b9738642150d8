from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from core.models import User
from projects.models import Project


def projects_of(user: User) -> QuerySet[Project]:
    return Project.objects.filter(owner=user).order_by("-updated_at", "-id")


def project_for(user: User, project_id: int) -> Project:
    """A project the user may see: their own. Anything else is a 404, revealing nothing."""
    return get_object_or_404(Project, pk=project_id, owner=user)
