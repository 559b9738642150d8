from django.urls import path

from deployment import views

urlpatterns = [
    path("algorithms/", views.algorithm_list, name="algorithm_list"),
    path("algorithms/<int:algorithm_id>/", views.algorithm_detail, name="algorithm_detail"),
    path("models/<int:model_id>/publish", views.model_publish, name="model_publish"),
    path("devices/", views.device_list, name="device_list"),
    path("devices/<int:device_id>/", views.device_detail, name="device_detail"),
]
