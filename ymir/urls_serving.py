"""The inference service's URLs: the API (predict among it) and the health check; no pages."""

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils.translation import gettext as _

from core import views
from ymir.api import api_urls

urlpatterns = [
    path("api/v1/", api_urls()),
    path("healthz", views.healthz, name="healthz"),
]


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": "not_found", "message": _("Not found. This process serves the API only.")}}, status=404
    )


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": {"code": "server_error", "message": _("Internal error.")}}, status=500)


handler404 = not_found
handler500 = server_error
