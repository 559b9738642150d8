"""The inference service's hot path, answered in front of Django's request handling.

A prediction's own work (decode + onnxruntime) is the same either way; what Django's handler adds around the
view (the request object, signals, middleware, URL resolving, django-ninja's parameter and response layers)
measured 0.9 ms a request in the service, more than half of what HTTP costs (benchmarks/serving_speed.py).

Only the plain case is answered here: ``POST /api/v1/algorithms/<id>/predict`` with raw image bytes
(``image/*`` or ``application/octet-stream``), a live bearer token, a body within the limit and nothing in the
query string but ``score_threshold`` and ``max_boxes``, and no ``Accept-Language`` or cookie (the answer is
then in the default language). It makes the same service calls as the API view
(``deployment.api.algorithm_predict``) and answers the same JSON with the same headers. Everything else, and
every error, goes to Django untouched (the body handed on, the rate count marked as taken), so errors are
shaped, translated and logged in one place.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core import signals

from core.tokens import token_authenticate
from deployment import services

ROUTE = re.compile(r"/api/v1/algorithms/(\d{1,18})/predict")
RAW_TYPES = ("image/", "application/octet-stream")
QUERY = {"score_threshold": float, "max_boxes": int}
COUNTED = "ymir.predict_counted"  # environ key: the rate limit has counted this request already

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastPredict:
    """WSGI middleware in front of Django: see the module's docstring."""

    def __init__(self, django: WsgiApp) -> None:
        self.django = django

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = self._answer(environ)
        if answer is None:
            return self.django(environ, start_response)
        start_response("200 OK", response_headers(environ, len(answer)))
        return [answer]

    def _answer(self, environ: dict[str, Any]) -> bytes | None:
        route = ROUTE.fullmatch(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            return None
        if not environ.get("CONTENT_TYPE", "").startswith(RAW_TYPES) or _needs_redirect(environ):
            return None
        if "HTTP_ACCEPT_LANGUAGE" in environ or "HTTP_COOKIE" in environ:  # a language to answer in: Django's
            return None
        scheme, _space, secret = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        options = _options(environ.get("QUERY_STRING", ""))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        if scheme.lower() != "bearer" or options is None or not 0 < length <= settings.YMIR_PREDICT_MAX_BYTES:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # whatever happens next, Django can read it again
        environ["CONTENT_LENGTH"] = str(len(body))
        signals.request_started.send(sender=self.__class__, environ=environ)  # database connections checked
        try:
            token = token_authenticate(secret.strip(), remember_seconds=services.SERVING_CACHE_SECONDS)
            if token is None:
                return None
            algorithm = services.algorithm_for_serving(token.user, int(route.group(1)))
            services.rate_check(str(token.pk))  # over the limit: Django counts it again and answers 429
            environ[COUNTED] = True
            result = services.predict(algorithm, [body], **options)
        except Exception:  # any failure: Django answers it, shaped, translated and logged
            return None
        finally:
            signals.request_finished.send(sender=self.__class__)
        return json.dumps(result).encode()


def _options(query: str) -> dict[str, Any] | None:
    """score_threshold and max_boxes from the query string; None when it holds anything else or a bad value."""
    options: dict[str, Any] = {}
    try:
        for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            if name not in QUERY or name in options:
                return None
            options[name] = QUERY[name](value)
    except ValueError:
        return None
    return options


def _needs_redirect(environ: dict[str, Any]) -> bool:
    """SecurityMiddleware would send this plain-HTTP request to https: leave it to Django."""
    return bool(settings.SECURE_SSL_REDIRECT) and not _is_secure(environ)


def _is_secure(environ: dict[str, Any]) -> bool:
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        return environ.get(proxy[0], "").split(",")[0].strip() == proxy[1]
    return environ.get("wsgi.url_scheme") == "https"


def response_headers(environ: dict[str, Any], length: int) -> list[tuple[str, str]]:
    """The headers Django's stack gives a successful prediction (the API's renderer, SecurityMiddleware
    and the language middleware)."""
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if settings.SECURE_HSTS_SECONDS and _is_secure(environ):
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append(("Strict-Transport-Security", hsts))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        headers.append(("Referrer-Policy", settings.SECURE_REFERRER_POLICY))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    headers += [("Vary", "Accept-Language"), ("Content-Language", settings.LANGUAGE_CODE)]
    headers.append(("Content-Length", str(length)))
    return headers
