from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from ninja import Router, Schema, Status
from ninja.errors import AuthenticationError
from pydantic import Field

from core import services, tokens
from core.errors import Forbidden
from core.models import ApiToken, User
from core.selectors import tokens_of, users_for_management
from core.throttle import check_login_allowed, client_ip, record_login_failure, record_login_success

router = Router(tags=["accounts"])


class TokenIn(Schema):
    username: str = Field(max_length=150)
    password: str = Field(max_length=4096)


class TokenOut(Schema):
    token: str
    expires_at: datetime | None


class UserOut(Schema):
    id: int
    username: str
    email: str
    role: str
    is_active: bool
    date_joined: datetime
    last_login: datetime | None


class UserCreateIn(Schema):
    username: str = Field(max_length=150)
    password: str = Field(max_length=4096)
    email: str = ""
    role: User.Role = User.Role.TRAINER
    note: str = Field("", max_length=200)


class UserPatchIn(Schema):
    role: User.Role | None = None
    email: str | None = None
    is_active: bool | None = None


class PasswordIn(Schema):
    password: str = Field(max_length=4096)


class PersonalTokenIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    days: int | None = Field(None, ge=1, le=3650)


class PersonalTokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class NewPersonalTokenOut(PersonalTokenOut):
    token: str


def _user(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


@router.post("/auth/token", auth=None, response=TokenOut, summary="Exchange a username and password for a token")
def auth_token(request: HttpRequest, body: TokenIn) -> dict[str, object]:
    ip = client_ip(request.META)
    check_login_allowed(body.username, ip)
    user = User.objects.filter(username__iexact=body.username).first()
    if user is None or not user.is_active or not user.check_password(body.password):
        record_login_failure(body.username, ip)
        raise AuthenticationError(message=_("Wrong username or password."))
    record_login_success(body.username, ip)
    token, raw = tokens.token_issue_login(user=user)
    return {"token": raw, "expires_at": token.expires_at}


@router.delete("/auth/token", response={204: None}, summary="Revoke the token this request carries")
def auth_token_revoke(request: HttpRequest) -> Status[None]:
    api_token: ApiToken = request.api_token  # type: ignore[attr-defined]
    tokens.token_revoke(user=_user(request), token_id=api_token.pk)
    return Status(204, None)


@router.get("/me", response=UserOut)
def me(request: HttpRequest) -> User:
    return _user(request)


@router.get("/tokens", response=list[PersonalTokenOut], summary="My personal tokens")
def token_list(request: HttpRequest) -> list[ApiToken]:
    return list(tokens_of(_user(request)))


@router.post("/tokens", response={201: NewPersonalTokenOut}, summary="Create a personal token (shown once)")
def token_create(request: HttpRequest, body: PersonalTokenIn) -> Status[dict[str, object]]:
    token, raw = tokens.token_issue(user=_user(request), name=body.name, kind=ApiToken.Kind.PERSONAL, days=body.days)
    data = PersonalTokenOut.model_validate(token).model_dump()
    data["token"] = raw
    return Status(201, data)


@router.delete("/tokens/{token_id}", response={204: None})
def token_delete(request: HttpRequest, token_id: int) -> Status[None]:
    tokens.token_revoke(user=_user(request), token_id=token_id)
    return Status(204, None)


# --- User management (admins) ---------------------------------------------------------------------


def _require_admin(request: HttpRequest) -> User:
    actor = _user(request)
    if not actor.is_platform_admin:
        raise Forbidden(_("Only administrators manage users."))
    return actor


@router.get("/users", response=list[UserOut], tags=["users"])
def user_list(request: HttpRequest) -> list[User]:
    _require_admin(request)
    return list(users_for_management())


@router.post("/users", response={201: UserOut}, tags=["users"])
def user_create(request: HttpRequest, body: UserCreateIn) -> Status[User]:
    actor = _require_admin(request)
    user = services.user_create(
        actor=actor,
        username=body.username,
        email=body.email,
        password=body.password,
        role=body.role,
        note=body.note,
    )
    return Status(201, user)


@router.get("/users/{user_id}", response=UserOut, tags=["users"])
def user_get(request: HttpRequest, user_id: int) -> User:
    _require_admin(request)
    return get_object_or_404(User, pk=user_id)


@router.patch("/users/{user_id}", response=UserOut, tags=["users"])
def user_patch(request: HttpRequest, user_id: int, body: UserPatchIn) -> User:
    actor = _require_admin(request)
    user = get_object_or_404(User, pk=user_id)
    if body.email is not None:
        services.user_set_email(actor=actor, user=user, email=body.email)
    if body.role is not None:
        services.user_set_role(actor=actor, user=user, role=body.role)
    if body.is_active is not None:
        services.user_set_active(actor=actor, user=user, active=body.is_active)
    return user


@router.post("/users/{user_id}/password", response={204: None}, tags=["users"])
def user_password(request: HttpRequest, user_id: int, body: PasswordIn) -> Status[None]:
    actor = _require_admin(request)
    services.user_set_password(actor=actor, user=get_object_or_404(User, pk=user_id), password=body.password)
    return Status(204, None)


@router.delete("/users/{user_id}", response={204: None}, tags=["users"])
def user_delete(request: HttpRequest, user_id: int) -> Status[None]:
    actor = _require_admin(request)
    services.user_delete(actor=actor, user=get_object_or_404(User, pk=user_id))
    return Status(204, None)
