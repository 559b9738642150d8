from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from core.tokens import token_authenticate


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``; the request then carries ``user`` and ``api_token``.
    ``remember_seconds``: see ``token_authenticate`` (hot paths only)."""

    def __init__(self, remember_seconds: float = 0) -> None:
        super().__init__()
        self.remember_seconds = remember_seconds

    def __call__(self, request: HttpRequest) -> Any:
        # ninja's reads request.headers, which parses every header of the request (a hot path: predict)
        scheme, _space, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != self.openapi_scheme or not token:
            return None
        return self.authenticate(request, token.strip())

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        api_token = token_authenticate(token, remember_seconds=self.remember_seconds)
        if api_token is None:
            return None
        request.user = api_token.user
        request.api_token = api_token  # type: ignore[attr-defined]
        return api_token.user
