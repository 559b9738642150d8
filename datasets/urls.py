from django.urls import path

from datasets import labelling_views, views

urlpatterns = [
    path("projects/<int:project_id>/datasets/import", views.dataset_import, name="dataset_import"),
    path("datasets/analysis", views.dataset_analysis, name="dataset_analysis"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset_detail"),
    path("datasets/<int:dataset_id>/assets/<int:asset_id>", views.asset_detail, name="asset_detail"),
    path("datasets/<int:dataset_id>/assets/<int:asset_id>/tags", views.asset_tags, name="asset_tags"),
    path("datasets/public/", views.public_datasets, name="public_datasets"),
    path("datasets/<int:dataset_id>/retry", views.dataset_retry, name="dataset_retry"),
    path("datasets/<int:dataset_id>/export", views.dataset_export, name="dataset_export"),
    path("datasets/<int:dataset_id>/operate", views.dataset_operate, name="dataset_operate"),
    path("datasets/<int:dataset_id>/delete", views.dataset_delete_view, name="dataset_delete"),
    path("datasets/<int:dataset_id>/public", views.dataset_public, name="dataset_public"),
    path("assets/<str:sha1>", views.asset_image, name="asset_image"),
    path("classes/", views.class_list, name="class_list"),
    path("classes/<int:label_id>/rename", views.class_rename, name="class_rename"),
    path("classes/<int:label_id>/alias", views.class_alias, name="class_alias"),
    path("classes/<int:label_id>/merge", views.class_merge, name="class_merge"),
]

urlpatterns += [
    path("datasets/<int:dataset_id>/labelling/new", labelling_views.labelling_new, name="labelling_new"),
    path("labellings/<int:labelling_id>/", labelling_views.labelling_detail, name="labelling_detail"),
    path("labellings/<int:labelling_id>/import", labelling_views.labelling_import, name="labelling_import"),
    path("labellings/<int:labelling_id>/refresh", labelling_views.labelling_refresh, name="labelling_refresh"),
    path("labellings/<int:labelling_id>/cancel", labelling_views.labelling_cancel, name="labelling_cancel"),
    path("labellings/<int:labelling_id>/relabel", labelling_views.labelling_relabel, name="labelling_relabel"),
    path("labelling/images/<str:token>", labelling_views.labelling_image, name="labelling_image"),
    path("labelling/hooks/<int:labelling_id>", labelling_views.labelling_hook, name="labelling_hook"),
    path("manage/labelling/", labelling_views.labelling_tool, name="labelling_tool"),
]
