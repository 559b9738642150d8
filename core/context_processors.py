from __future__ import annotations

from django.http import HttpRequest


def navigation(request: HttpRequest) -> dict[str, object]:
    user = getattr(request, "user", None)
    is_admin = bool(user is not None and user.is_authenticated and getattr(user, "is_platform_admin", False))
    return {"nav_is_admin": is_admin}
