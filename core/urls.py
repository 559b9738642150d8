from django.contrib.auth.views import LogoutView
from django.urls import path

from core import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", views.ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("accounts/register/", views.register, name="register"),
    path("account/", views.account, name="account"),
    path("account/email", views.account_email, name="account_email"),
    path("account/password", views.account_password, name="account_password"),
    path("account/tokens", views.token_create, name="token_create"),
    path("account/tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
    path("manage/users/", views.user_list, name="user_list"),
    path("manage/users/create", views.user_create, name="user_create"),
    path("manage/users/<int:user_id>/role", views.user_role, name="user_role"),
    path("manage/users/<int:user_id>/email", views.user_email, name="user_email"),
    path("manage/users/<int:user_id>/password", views.user_password, name="user_password"),
    path("manage/users/<int:user_id>/active", views.user_active, name="user_active"),
    path("manage/users/<int:user_id>/delete", views.user_delete, name="user_delete"),
]
