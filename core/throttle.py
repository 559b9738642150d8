"""Login throttling: failures are counted per user name and per client address in the shared cache.

Once a name (or an address) has used up its failures within the window, every attempt is refused until the
window passes, even with the right password, so guessing cannot continue at any speed.
"""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache
from django.utils.translation import gettext as _

from core.errors import Throttled

IP_FACTOR = 4  # one address may fail for several names (a shared office gateway) before it is blocked


def _keys(username: str, ip: str) -> list[tuple[str, int]]:
    name = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    limit = settings.YMIR_LOGIN_FAILURE_LIMIT
    return [(f"ymir:login:user:{name}", limit), (f"ymir:login:ip:{ip}", limit * IP_FACTOR)]


def check_login_allowed(username: str, ip: str) -> None:
    for key, limit in _keys(username, ip):
        count = cache.get(key) or 0
        if count >= limit:
            retry_after = max(1, int((cache.get(f"{key}:until") or time.time()) - time.time()))
            raise Throttled(
                _("Too many failed logins. Try again in %(seconds)d seconds.") % {"seconds": retry_after},
                retry_after=retry_after,
            )


def record_login_failure(username: str, ip: str) -> None:
    window = settings.YMIR_LOGIN_FAILURE_WINDOW
    for key, _limit in _keys(username, ip):
        # add() starts the window only once; incr() is atomic on Redis.
        if cache.add(key, 0, timeout=window):
            cache.set(f"{key}:until", time.time() + window, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # the window expired between add() and incr()
            cache.set(key, 1, timeout=window)


def record_login_success(username: str, ip: str) -> None:
    cache.delete(_keys(username, ip)[0][0])


def client_ip(meta: dict[str, str]) -> str:
    return meta.get("REMOTE_ADDR", "") or "unknown"
