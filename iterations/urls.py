from django.urls import path

from iterations import views

urlpatterns = [
    path("projects/<int:project_id>/iterations/", views.iteration_home, name="iteration_home"),
    path("projects/<int:project_id>/iterations/new", views.iteration_new, name="iteration_new"),
    path("iterations/<int:iteration_id>/", views.iteration_detail, name="iteration_detail"),
    path("iterations/<int:iteration_id>/stop", views.iteration_stop, name="iteration_stop"),
    path(
        "iterations/<int:iteration_id>/rounds/<int:round_id>/<str:step>", views.round_step, name="iteration_round_step"
    ),
]
