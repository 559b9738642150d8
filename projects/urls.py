from django.urls import path

from projects import views

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("<int:project_id>/", views.project_detail, name="project_detail"),
    path("<int:project_id>/edit", views.project_edit, name="project_edit"),
    path("<int:project_id>/delete", views.project_delete_view, name="project_delete"),
]
