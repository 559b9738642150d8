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
