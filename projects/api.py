from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status
from pydantic import Field

from core.models import User
from projects.models import Project
from projects.selectors import project_for, projects_of
from projects.services import project_create

router = Router(tags=["projects"])


class ProjectIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)


class ProjectOut(Schema):
    id: int
    name: str
    description: str
    created_at: datetime
    updated_at: datetime


@router.get("/projects", response=list[ProjectOut])
def project_list(request: HttpRequest) -> list[Project]:
    return list(projects_of(request.user))  # type: ignore[arg-type]


@router.post("/projects", response={201: ProjectOut})
def project_post(request: HttpRequest, body: ProjectIn) -> Status[Project]:
    user: User = request.user  # type: ignore[assignment]
    return Status(201, project_create(owner=user, name=body.name, description=body.description))


@router.get("/projects/{project_id}", response=ProjectOut)
def project_get(request: HttpRequest, project_id: int) -> Project:
    return project_for(request.user, project_id)  # type: ignore[arg-type]
