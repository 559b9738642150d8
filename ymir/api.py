"""The JSON API under /api/v1: token auth, OpenAPI at /api/v1/openapi.json, one error shape everywhere.

Every error answers ``{"error": {"code": ..., "message": ..., "details": ...}}`` with its HTTP status.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError

from core.api import router as core_router
from core.api_auth import TokenAuth
from core.errors import ServiceError, Throttled
from datasets.api import router as datasets_router
from datasets.labelling_api import router as labelling_router
from deployment.api import router as deployment_router
from iterations.api import router as iterations_router
from models_app.api import router as tasks_router
from projects.api import router as projects_router

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="YMIR platform API",
    version="1",
    description="Token auth: POST /api/v1/auth/token, then send `Authorization: Bearer <token>`.",
    auth=TokenAuth(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def error_response(request: HttpRequest, status: int, code: str, message: str, details: Any = None) -> HttpResponse:
    return api.create_response(
        request, {"error": {"code": code, "message": message, "details": details}}, status=status
    )


@api.exception_handler(ServiceError)
def on_service_error(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    response = error_response(request, exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, Throttled):
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    details = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors]
    return error_response(request, 422, "invalid", _("The request is not valid."), details)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = str(exc.message) if getattr(exc, "message", None) else _("A valid token is required.")
    if message == "Unauthorized":
        message = _("A valid token is required.")
    response = error_response(request, 401, "unauthenticated", message)
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(AuthorizationError)
def on_unauthorized(request: HttpRequest, exc: AuthorizationError) -> HttpResponse:
    return error_response(request, 403, "forbidden", _("You do not have access to this."))


@api.exception_handler(PermissionDenied)
def on_permission_denied(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return error_response(request, 403, "forbidden", _("You do not have access to this."))


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(request, 404, "not_found", _("Not found."))


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    codes = {
        400: "bad_request",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        429: "throttled",
    }
    return error_response(request, exc.status_code, codes.get(exc.status_code, "error"), str(exc.message))


@api.exception_handler(Exception)
def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("Unhandled API error on %s %s", request.method, request.path)
    return error_response(request, 500, "server_error", _("Something went wrong on our side. It has been logged."))


@api.get("/health", auth=None, tags=["platform"], summary="Liveness: the database answers")
def health(request: HttpRequest) -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"status": "ok"}


api.add_router("", core_router)
api.add_router("", projects_router)
api.add_router("", datasets_router)
api.add_router("", tasks_router)
api.add_router("", labelling_router)
api.add_router("", iterations_router)
api.add_router("", deployment_router)


HOT_ROUTES = ("algorithm_predict",)


def api_urls() -> tuple[list[Any], str, str]:
    """The API's URL patterns with the inference route first. Django tries patterns in order, about 6 µs
    each for the API's; the predict route, registered 63rd of 72, cost 0.4 ms a prediction to find."""
    patterns, app_name, namespace = api.urls
    return sorted(patterns, key=lambda p: p.name not in HOT_ROUTES), app_name, namespace
