"""API tokens: issue, authenticate, revoke. Secrets are shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import NotFound
from core.models import ApiToken, User

TOKEN_PREFIX = "ymir_"  # noqa: S105  (a marker, not a secret)
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_issue(*, user: User, name: str, kind: str, days: int | None) -> tuple[ApiToken, str]:
    raw = _new_secret()
    expires_at = timezone.now() + timedelta(days=days) if days else None
    token = ApiToken.objects.create(
        user=user,
        name=name,
        kind=kind,
        key_hash=_hash(raw),
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        expires_at=expires_at,
    )
    return token, raw


def token_issue_login(*, user: User) -> tuple[ApiToken, str]:
    return token_issue(user=user, name="login", kind=ApiToken.Kind.LOGIN, days=settings.YMIR_LOGIN_TOKEN_DAYS)


# key hash -> (valid until, token): live tokens recently checked by this process, for callers that accept a
# revocation made by another process taking effect a moment later (the inference service's hot path)
_recent: dict[str, tuple[float, ApiToken]] = {}


def token_authenticate(raw: str, *, remember_seconds: float = 0) -> ApiToken | None:
    """The live token of a secret, or None. With ``remember_seconds``, a live token found is remembered that
    long in this process; a revocation in this process forgets at once, one elsewhere applies within it."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    key = _hash(raw)
    if remember_seconds > 0:
        hit = _recent.get(key)
        if hit is not None and hit[0] > time.monotonic() and hit[1].is_live:
            return hit[1]
    token = ApiToken.objects.select_related("user").filter(key_hash=key).first()
    if token is None or not token.is_live or not token.user.is_active:
        _recent.pop(key, None)
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    if remember_seconds > 0:
        if len(_recent) > 10_000:
            _recent.clear()
        _recent[key] = (time.monotonic() + remember_seconds, token)
    return token


def tokens_forget() -> None:
    """Forget the remembered tokens of this process (after a revocation or a user's deactivation)."""
    _recent.clear()


def token_revoke(*, user: User, token_id: int) -> None:
    updated = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    tokens_forget()
    if not updated:
        raise NotFound("No such token.")


def tokens_revoke_all(*, user: User, kinds: tuple[str, ...] = (ApiToken.Kind.LOGIN,)) -> int:
    with transaction.atomic():
        count = ApiToken.objects.filter(user=user, kind__in=kinds, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    tokens_forget()
    return count
