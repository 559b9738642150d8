from django.contrib import admin
from django.urls import include, path

from ymir.api import api_urls

admin.site.site_header = "YMIR console"
admin.site.site_title = "YMIR console"
admin.site.index_title = "Platform administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api_urls()),
    path("i18n/", include("django.conf.urls.i18n")),
    path("projects/", include("projects.urls")),
    path("", include("models_app.urls")),
    path("", include("iterations.urls")),
    path("", include("deployment.urls")),
    path("", include("datasets.urls")),
    path("", include("core.urls")),
]

handler400 = "core.views.error_400"
handler403 = "core.views.error_403"
handler404 = "core.views.error_404"
handler500 = "core.views.error_500"
