"""Account and user-management writes. Every permission rule of user management lives here."""

from __future__ import annotations

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import ProtectedError
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid
from core.models import ApiToken, User, username_validator
from core.tokens import tokens_revoke_all

Role = User.Role


def _validate_username(username: str) -> None:
    try:
        username_validator(username)
    except ValidationError as exc:
        raise Invalid(" ".join(exc.messages), code="invalid_username") from exc
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(_("A user with that username already exists."), code="username_taken")


def _validate_email(email: str) -> None:
    if email:
        try:
            validate_email(email)
        except ValidationError as exc:
            raise Invalid(_("Enter a valid email address."), code="invalid_email") from exc


def _validate_password(password: str, user: User | None = None) -> None:
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        raise Invalid(" ".join(exc.messages), code="invalid_password", details=exc.messages) from exc


def _require_admin(actor: User) -> None:
    if not actor.is_platform_admin:
        raise Forbidden(_("Only administrators manage users."))


def _require_may_manage(actor: User, target: User) -> None:
    _require_admin(actor)
    if target.role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden(_("Only a super admin can change a super admin."))


def _is_last_super_admin(user: User) -> bool:
    return (
        user.role == Role.SUPER_ADMIN
        and not User.objects.filter(role=Role.SUPER_ADMIN, is_active=True).exclude(pk=user.pk).exists()
    )


def user_register(*, username: str, email: str, password: str) -> User:
    """Self-registration. The first account of the platform becomes its super admin."""
    _validate_username(username)
    _validate_email(email)
    _validate_password(password, User(username=username, email=email))
    with transaction.atomic():
        # SQLite runs IMMEDIATE transactions (one writer); on PostgreSQL the table lock serialises this check.
        if transaction.get_connection().vendor == "postgresql":
            with transaction.get_connection().cursor() as cursor:
                cursor.execute(f'LOCK TABLE "{User._meta.db_table}" IN SHARE ROW EXCLUSIVE MODE')
        role = Role.TRAINER if User.objects.exists() else Role.SUPER_ADMIN
        return User.objects.create_user(username=username, email=email, password=password, role=role)


def user_create(*, actor: User, username: str, email: str, password: str, role: str, note: str = "") -> User:
    _require_admin(actor)
    if role not in Role.values:
        raise Invalid(_("Unknown role."), code="invalid_role")
    if role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden(_("Only a super admin can grant the super admin role."))
    _validate_username(username)
    _validate_email(email)
    _validate_password(password, User(username=username, email=email))
    return User.objects.create_user(username=username, email=email, password=password, role=role, note=note)


def user_set_role(*, actor: User, user: User, role: str) -> User:
    _require_may_manage(actor, user)
    if role not in Role.values:
        raise Invalid(_("Unknown role."), code="invalid_role")
    if role == Role.SUPER_ADMIN and not actor.is_super_admin:
        raise Forbidden(_("Only a super admin can grant the super admin role."))
    if role != Role.SUPER_ADMIN and _is_last_super_admin(user):
        raise Conflict(_("The platform needs at least one active super admin."), code="last_super_admin")
    user.role = role
    user.save(update_fields=["role"])
    return user


def user_set_email(*, actor: User, user: User, email: str) -> User:
    if actor.pk != user.pk:
        _require_may_manage(actor, user)
    _validate_email(email)
    user.email = email
    user.save(update_fields=["email"])
    return user


def user_set_password(*, actor: User, user: User, password: str) -> User:
    """An admin resets a password. Sessions end (Django checks the password hash) and login tokens die."""
    _require_may_manage(actor, user)
    _validate_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        tokens_revoke_all(user=user)
    return user


def user_set_active(*, actor: User, user: User, active: bool) -> User:
    _require_may_manage(actor, user)
    if not active and user.pk == actor.pk:
        raise Conflict(_("You cannot deactivate yourself."), code="self")
    if not active and _is_last_super_admin(user):
        raise Conflict(_("The platform needs at least one active super admin."), code="last_super_admin")
    with transaction.atomic():
        user.is_active = active
        user.save(update_fields=["is_active"])
        if not active:
            tokens_revoke_all(user=user, kinds=(ApiToken.Kind.LOGIN, ApiToken.Kind.PERSONAL))
    return user


def user_delete(*, actor: User, user: User) -> None:
    _require_may_manage(actor, user)
    if user.pk == actor.pk:
        raise Conflict(_("You cannot delete yourself."), code="self")
    if _is_last_super_admin(user):
        raise Conflict(_("The platform needs at least one active super admin."), code="last_super_admin")
    try:
        user.delete()
    except ProtectedError as exc:
        raise Conflict(
            _("This user still owns projects or tasks. Deactivate the account instead."),
            code="user_owns_data",
        ) from exc


def account_change_password(*, user: User, old_password: str, new_password: str) -> User:
    """The user's own change: every session and login token ends, including the current one."""
    if not user.check_password(old_password):
        raise Invalid(_("Your current password is not correct."), code="wrong_password")
    _validate_password(new_password, user)
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        tokens_revoke_all(user=user)
    return user
