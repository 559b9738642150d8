from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import translation
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _

# Paths whose views stream large uploads to disk (dataset and model packages) get the upload limit.
UPLOAD_PATH_SUFFIXES = ("/datasets", "/datasets/import", "/models", "/models/import", "/upload")


class RequestSizeLimitMiddleware:
    """Refuse bodies over the limit from their Content-Length, before anything reads them (413)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        path = request.path.rstrip("/")
        limit = (
            settings.YMIR_MAX_UPLOAD_BYTES if path.endswith(UPLOAD_PATH_SUFFIXES) else settings.YMIR_MAX_REQUEST_BYTES
        )
        if path.endswith("/predict"):  # the inference service: images, one batch at most
            limit = settings.YMIR_PREDICT_MAX_BYTES
        if length > limit:
            message = _("The request body is too large (limit %(limit)d bytes).") % {"limit": limit}
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"error": {"code": "too_large", "message": message, "details": {"limit": limit}}},
                    status=413,
                )
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class ApiErrorShapeMiddleware:
    """Responses Django makes before a view runs (405 and the like) get the API's error shape too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code == 405
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            allowed = response.get("Allow", "")
            shaped = JsonResponse(
                {
                    "error": {
                        "code": "method_not_allowed",
                        "message": _("Method not allowed."),
                        "details": {"allow": allowed},
                    }
                },
                status=405,
            )
            shaped["Allow"] = allowed
            return shaped
        return response


class ApiLanguageMiddleware:
    """The caller's language (``Accept-Language``, else the default) for the API-only inference process:
    Django's ``LocaleMiddleware`` less its URL-prefix checks, which need ``i18n_patterns`` this process does
    not use (they ran three times a request, a fifth of the framework's time per prediction)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_ACCEPT_LANGUAGE" in request.META or settings.LANGUAGE_COOKIE_NAME in request.COOKIES:
            language = translation.get_language_from_request(request)
        else:
            language = settings.LANGUAGE_CODE
        translation.activate(language)
        request.LANGUAGE_CODE = translation.get_language()
        response = self.get_response(request)
        patch_vary_headers(response, ("Accept-Language",))
        response.headers.setdefault("Content-Language", request.LANGUAGE_CODE)
        return response
