"""Accounts, roles and user management, on the pages and through the API."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from core import services
from core.errors import Conflict, Forbidden, Invalid
from core.models import User
from tests.conftest import api_as, logged_in
from tests.factories import PASSWORD, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "Another-Pass-77"


def _register(client: Client, username: str) -> None:
    response = client.post(
        reverse("register"),
        {
            "username": username,
            "email": f"{username}@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]


def test_first_registered_user_is_super_admin_and_second_is_trainer():
    _register(Client(), "first_user")
    _register(Client(), "second_user")
    assert User.objects.get(username="first_user").role == User.Role.SUPER_ADMIN
    second = User.objects.get(username="second_user")
    assert second.role == User.Role.TRAINER
    assert not second.is_staff and not second.is_superuser
    first = User.objects.get(username="first_user")
    assert first.is_staff and first.is_superuser


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        ("abcd", PASSWORD, "At least 5 characters"),
        ("bad-name!", PASSWORD, "At least 5 characters"),
        ("good_name", "short1A", "at least 8"),
        ("good_name", "alllowercaseletters", "two of"),
    ],
)
def test_registration_rejects_bad_usernames_and_passwords(username, password, error):
    response = Client().post(
        reverse("register"), {"username": username, "email": "", "password1": password, "password2": password}
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not User.objects.exists()


def test_usernames_are_unique_without_regard_to_case(trainer):
    with pytest.raises(Conflict):
        services.user_register(username=trainer.username.upper(), email="", password=PASSWORD)


def test_trainer_is_refused_user_management_and_nothing_changes(trainer, super_admin):
    client = logged_in(trainer)
    before = list(User.objects.values_list("id", "username", "email", "role", "is_active", "password"))
    assert client.get(reverse("user_list")).status_code == 403
    posts = [
        (reverse("user_create"), {"username": "intruder", "password": PASSWORD, "role": "super_admin"}),
        (reverse("user_role", args=[trainer.pk]), {"role": "super_admin"}),
        (reverse("user_email", args=[super_admin.pk]), {"email": "x@example.org"}),
        (reverse("user_password", args=[super_admin.pk]), {"password": NEW_PASSWORD}),
        (reverse("user_active", args=[super_admin.pk]), {"active": "0"}),
        (reverse("user_delete", args=[super_admin.pk]), {}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    api = api_as(trainer)
    assert api.get("/api/v1/users").status_code == 403
    assert api.post("/api/v1/users", {"username": "intruder", "password": PASSWORD}).status_code == 403
    assert api.patch(f"/api/v1/users/{trainer.pk}", {"role": "super_admin"}).status_code == 403
    assert api.post(f"/api/v1/users/{super_admin.pk}/password", {"password": NEW_PASSWORD}).status_code == 403
    response = api.delete(f"/api/v1/users/{super_admin.pk}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    after = list(User.objects.values_list("id", "username", "email", "role", "is_active", "password"))
    assert after == before


def test_admin_performs_every_user_operation_on_the_pages(admin_user):
    client = logged_in(admin_user)
    response = client.post(
        reverse("user_create"),
        {"username": "new_trainer", "email": "n@example.org", "password": PASSWORD, "role": "trainer"},
    )
    assert response.status_code == 302
    target = User.objects.get(username="new_trainer")
    assert target.check_password(PASSWORD)

    client.post(reverse("user_role", args=[target.pk]), {"role": "admin"})
    client.post(reverse("user_email", args=[target.pk]), {"email": "changed@example.org"})
    client.post(reverse("user_password", args=[target.pk]), {"password": NEW_PASSWORD})
    client.post(reverse("user_active", args=[target.pk]), {"active": "0"})
    target.refresh_from_db()
    assert (target.role, target.email, target.is_active) == ("admin", "changed@example.org", False)
    assert target.check_password(NEW_PASSWORD) and target.is_staff

    client.post(reverse("user_delete", args=[target.pk]))
    assert not User.objects.filter(pk=target.pk).exists()


def test_admin_performs_every_user_operation_through_the_api(admin_user):
    api = api_as(admin_user)
    response = api.post("/api/v1/users", {"username": "api_trainer", "password": PASSWORD, "email": "a@example.org"})
    assert response.status_code == 201, response.content
    user_id = response.json()["id"]
    assert response.json()["role"] == "trainer"
    response = api.patch(f"/api/v1/users/{user_id}", {"role": "admin", "email": "b@example.org", "is_active": False})
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    assert response.json()["email"] == "b@example.org" and response.json()["is_active"] is False
    assert api.post(f"/api/v1/users/{user_id}/password", {"password": NEW_PASSWORD}).status_code == 204
    assert User.objects.get(pk=user_id).check_password(NEW_PASSWORD)
    assert [u["username"] for u in api.get("/api/v1/users").json()] == ["plain_admin", "api_trainer"]
    assert api.delete(f"/api/v1/users/{user_id}").status_code == 204
    assert api.get(f"/api/v1/users/{user_id}").status_code == 404


def test_nobody_deletes_themself(super_admin):
    client = logged_in(super_admin)
    client.post(reverse("user_delete", args=[super_admin.pk]))
    assert User.objects.filter(pk=super_admin.pk).exists()
    response = api_as(super_admin).delete(f"/api/v1/users/{super_admin.pk}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "self"


def test_an_admin_cannot_touch_a_super_admin_or_grant_the_role(admin_user, super_admin, trainer):
    with pytest.raises(Forbidden):
        services.user_set_password(actor=admin_user, user=super_admin, password=NEW_PASSWORD)
    with pytest.raises(Forbidden):
        services.user_set_role(actor=admin_user, user=trainer, role=User.Role.SUPER_ADMIN)
    with pytest.raises(Forbidden):
        services.user_delete(actor=admin_user, user=super_admin)
    super_admin.refresh_from_db()
    trainer.refresh_from_db()
    assert super_admin.check_password(PASSWORD) and trainer.role == User.Role.TRAINER


def test_the_last_super_admin_cannot_be_demoted_or_deactivated(super_admin):
    other = UserFactory(role=User.Role.SUPER_ADMIN)
    services.user_set_role(actor=super_admin, user=other, role=User.Role.TRAINER)
    with pytest.raises(Conflict):
        services.user_set_role(actor=super_admin, user=super_admin, role=User.Role.ADMIN)
    with pytest.raises(Conflict):
        services.user_set_active(actor=super_admin, user=super_admin, active=False)


def test_a_user_owning_projects_is_not_deleted(super_admin, trainer):
    ProjectFactory(owner=trainer)
    with pytest.raises(Conflict) as excinfo:
        services.user_delete(actor=super_admin, user=trainer)
    assert excinfo.value.code == "user_owns_data"
    assert User.objects.filter(pk=trainer.pk).exists()


def test_weak_passwords_are_refused_for_admin_created_users(admin_user):
    with pytest.raises(Invalid):
        services.user_create(actor=admin_user, username="weakling", email="", password="password", role="trainer")
    assert not User.objects.filter(username="weakling").exists()


def test_own_password_change_logs_out_everywhere(trainer):
    elsewhere = logged_in(trainer)
    here = logged_in(trainer)
    api = api_as(trainer)
    assert elsewhere.get(reverse("home")).status_code == 200
    response = here.post(
        reverse("account_password"),
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302 and response["Location"] == reverse("login")
    for client in (here, elsewhere):
        response = client.get(reverse("home"))
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert api.get("/api/v1/me").status_code == 401
    trainer.refresh_from_db()
    assert trainer.check_password(NEW_PASSWORD)


def test_wrong_current_password_changes_nothing(trainer):
    client = logged_in(trainer)
    response = client.post(
        reverse("account_password"),
        {"old_password": "Wrong-Pass-123", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 422
    trainer.refresh_from_db()
    assert trainer.check_password(PASSWORD)


def test_own_email_change(trainer):
    client = logged_in(trainer)
    client.post(reverse("account_email"), {"email": "me@example.org"})
    trainer.refresh_from_db()
    assert trainer.email == "me@example.org"
    assert client.post(reverse("account_email"), {"email": "not-an-email"}).status_code == 422
    trainer.refresh_from_db()
    assert trainer.email == "me@example.org"


def test_django_admin_console_follows_roles(admin_user, trainer):
    assert logged_in(admin_user).get("/admin/").status_code == 200
    assert logged_in(admin_user).get("/admin/core/user/").status_code == 200
    response = logged_in(trainer).get("/admin/")
    assert response.status_code == 302
