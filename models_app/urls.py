from django.urls import path

from models_app import model_views, views

urlpatterns = [
    path("tasks/", views.task_list, name="task_list"),
    path("tasks/<int:task_id>/", views.task_detail, name="task_detail"),
    path("tasks/<int:task_id>/log", views.task_log, name="task_log"),
    path("tasks/<int:task_id>/cancel", views.task_cancel, name="task_cancel"),
    path("tasks/<int:task_id>/retry", views.task_retry, name="task_retry"),
    path("models/<int:model_id>/", views.model_detail, name="model_detail"),
    path("projects/<int:project_id>/train/", model_views.training_new, name="training_new"),
    path("projects/<int:project_id>/train/targets", model_views.training_targets, name="training_targets"),
    path("projects/<int:project_id>/mine/", model_views.mining_new, name="mining_new"),
    path("projects/<int:project_id>/infer/", model_views.inference_new, name="inference_new"),
    path("projects/<int:project_id>/models/import", model_views.model_import, name="model_import"),
    path("models/<int:model_id>/export", model_views.model_export, name="model_export"),
    path("evaluations/", model_views.evaluation_new, name="evaluation_new"),
    path("evaluations/<int:evaluation_id>/", model_views.evaluation_detail, name="evaluation_detail"),
    path("manage/executors/", views.executor_list, name="executor_list"),
    path("manage/executors/<int:image_id>/", views.executor_detail, name="executor_detail"),
]
