from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from core import services
from core.errors import ServiceError
from core.models import ApiToken, UrlAllowRule, User


class PlatformAdminMixin:
    """Admins (not only super admins) hold the console's permissions on the models they manage."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(getattr(request.user, "is_platform_admin", False))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(getattr(request.user, "is_platform_admin", False))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(getattr(request.user, "is_platform_admin", False))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(getattr(request.user, "is_platform_admin", False))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(User)
class UserAdmin(PlatformAdminMixin, admin.ModelAdmin):
    """Every change goes through the same services (and rules) as the user-management page."""

    list_display = ("username", "email", "role", "is_active", "date_joined", "last_login")
    list_filter = ("role", "is_active")
    search_fields = ("username", "email")
    fields = ("username", "email", "role", "is_active", "note", "date_joined", "last_login")
    readonly_fields = ("username", "date_joined", "last_login")
    actions = ["deactivate_users"]

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        actor: User = request.user  # type: ignore[assignment]
        before = User.objects.get(pk=obj.pk)
        try:
            if obj.email != before.email:
                services.user_set_email(actor=actor, user=before, email=obj.email)
            if obj.role != before.role:
                services.user_set_role(actor=actor, user=before, role=obj.role)
            if obj.is_active != before.is_active:
                services.user_set_active(actor=actor, user=before, active=obj.is_active)
            if obj.note != before.note:
                before.note = obj.note
                before.save(update_fields=["note"])
        except ServiceError as exc:
            messages.error(request, exc.message)

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        try:
            services.user_delete(actor=request.user, user=obj)  # type: ignore[arg-type]
        except ServiceError as exc:
            messages.error(request, exc.message)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            self.delete_model(request, user)

    @admin.action(description=_("Deactivate the selected users"))
    def deactivate_users(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            try:
                services.user_set_active(actor=request.user, user=user, active=False)  # type: ignore[arg-type]
            except ServiceError as exc:
                messages.error(request, f"{user.username}: {exc.message}")


@admin.register(ApiToken)
class ApiTokenAdmin(PlatformAdminMixin, admin.ModelAdmin):
    list_display = (
        "user",
        "name",
        "kind",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("kind",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = (
        "user",
        "name",
        "kind",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    exclude = ("key_hash",)
    actions = ["revoke"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description=_("Revoke the selected tokens"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


@admin.register(UrlAllowRule)
class UrlAllowRuleAdmin(PlatformAdminMixin, admin.ModelAdmin):
    list_display = ("pattern", "note", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(getattr(request.user, "is_platform_admin", False))
