from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

username_validator = RegexValidator(
    regex=r"^\w{5,150}\Z",
    message=_("At least 5 characters: letters, digits or underscores."),
    code="invalid_username",
)


class UserManager(DjangoUserManager["User"]):
    def create_superuser(
        self, username: str, email: str | None = None, password: str | None = None, **extra_fields: Any
    ) -> User:
        extra_fields.setdefault("role", User.Role.SUPER_ADMIN)
        return super().create_superuser(username, email, password, **extra_fields)


class User(AbstractUser):
    class Role(models.TextChoices):
        SUPER_ADMIN = "super_admin", _("Super admin")
        ADMIN = "admin", _("Admin")
        TRAINER = "trainer", _("Trainer")

    username = models.CharField(
        _("username"),
        max_length=150,
        unique=True,
        validators=[username_validator],
        help_text=_("At least 5 characters: letters, digits or underscores."),
        error_messages={"unique": _("A user with that username already exists.")},
    )
    role = models.CharField(_("role"), max_length=16, choices=Role.choices, default=Role.TRAINER)
    note = models.CharField(_("note"), max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(Lower("username"), name="user_username_ci_unique")]
        ordering = ["id"]

    @property
    def is_platform_admin(self) -> bool:
        return self.is_active and self.role in (self.Role.ADMIN, self.Role.SUPER_ADMIN)

    @property
    def is_super_admin(self) -> bool:
        return self.is_active and self.role == self.Role.SUPER_ADMIN

    objects: ClassVar[UserManager] = UserManager()

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The Django admin console follows the role: admins may enter it, super admins hold every permission.
        self.is_staff = self.role in (self.Role.ADMIN, self.Role.SUPER_ADMIN)
        self.is_superuser = self.role == self.Role.SUPER_ADMIN
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "role" in update_fields:
            kwargs["update_fields"] = {*update_fields, "is_staff", "is_superuser"}
        super().save(*args, **kwargs)


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 of the secret is stored."""

    class Kind(models.TextChoices):
        LOGIN = "login", _("Issued at login")
        PERSONAL = "personal", _("Personal")

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "kind"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_live(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class UrlAllowRule(models.Model):
    """A host name or a network (CIDR) that user-given URLs may reach although it is not public."""

    pattern = models.CharField(_("host or network"), max_length=200, unique=True)
    note = models.CharField(_("note"), max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.pattern
