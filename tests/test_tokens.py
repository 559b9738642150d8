"""API tokens, the error shape, the OpenAPI document and login throttling."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from openapi_spec_validator import validate

from core.models import ApiToken
from tests.conftest import ApiClient, api_as
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _token(username: str, password: str):
    return ApiClient().post("/api/v1/auth/token", {"username": username, "password": password})


def test_password_exchange_issues_a_working_token(trainer):
    response = _token(trainer.username, PASSWORD)
    assert response.status_code == 200
    raw = response.json()["token"]
    me = ApiClient(raw).get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == trainer.username
    stored = ApiToken.objects.get(user=trainer)
    assert raw not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    client = Client()
    for header, status in (
        (f"bearer {raw}", 200),  # the scheme in any letter case
        (f"Bearer  {raw} ", 200),
        (f"Basic {raw}", 401),
        (raw, 401),
        ("Bearer", 401),
        ("Bearer ", 401),
    ):
        assert client.get("/api/v1/me", headers={"Authorization": header}).status_code == status, header


def test_wrong_password_issues_no_token(trainer):
    response = _token(trainer.username, "Wrong-Pass-999")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert "token" not in response.json()
    assert not ApiToken.objects.exists()


def test_inactive_user_gets_no_token(trainer):
    trainer.is_active = False
    trainer.save()
    assert _token(trainer.username, PASSWORD).status_code == 401


def test_revoked_token_is_refused(trainer):
    api = api_as(trainer)
    assert api.get("/api/v1/me").status_code == 200
    assert api.delete("/api/v1/auth/token").status_code == 204
    response = api.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_missing_or_garbage_tokens_are_refused():
    assert ApiClient().get("/api/v1/me").status_code == 401
    assert ApiClient("ymir_notarealtoken").get("/api/v1/me").status_code == 401
    assert ApiClient("x" * 5000).get("/api/v1/me").status_code == 401


def test_personal_tokens_are_created_listed_and_revoked_through_the_api(trainer):
    api = api_as(trainer)
    response = api.post("/api/v1/tokens", {"name": "ci", "days": 30})
    assert response.status_code == 201
    created = response.json()
    personal = ApiClient(created["token"])
    assert personal.get("/api/v1/me").status_code == 200
    listed = api.get("/api/v1/tokens").json()
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    assert api.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    assert personal.get("/api/v1/me").status_code == 401


def test_personal_tokens_on_the_account_page(trainer):
    client = Client()
    client.force_login(trainer)
    response = client.post(reverse("token_create"), {"name": "laptop", "days": ""}, follow=True)
    page = response.content.decode()
    token = ApiToken.objects.get(user=trainer, name="laptop")
    assert token.expires_at is None
    start = page.index('id="new-token">') + len('id="new-token">')
    raw = page[start : page.index("<", start)]
    assert ApiClient(raw).get("/api/v1/me").status_code == 200
    # shown once: the next view of the page no longer carries it
    assert raw not in client.get(reverse("account")).content.decode()
    client.post(reverse("token_revoke", args=[token.pk]))
    assert ApiClient(raw).get("/api/v1/me").status_code == 401


def test_one_users_token_cannot_revoke_anothers(trainer, admin_user):
    response = api_as(admin_user).post("/api/v1/tokens", {"name": "mine"})
    token_id = response.json()["id"]
    assert api_as(trainer).delete(f"/api/v1/tokens/{token_id}").status_code == 404
    assert ApiToken.objects.get(pk=token_id).revoked_at is None


def test_api_login_is_throttled_after_repeated_failures(trainer, settings):
    settings.YMIR_LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        assert _token(trainer.username, "Wrong-Pass-999").status_code == 401
    response = _token(trainer.username, PASSWORD)  # even the right password, while blocked
    assert response.status_code == 429
    body = response.json()["error"]
    assert body["code"] == "throttled" and body["details"]["retry_after"] > 0
    assert int(response["Retry-After"]) > 0
    assert not ApiToken.objects.exists()


def test_web_login_is_throttled_after_repeated_failures(trainer, settings):
    settings.YMIR_LOGIN_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        response = client.post(reverse("login"), {"username": trainer.username, "password": "Wrong-Pass-9"})
        assert response.status_code == 200
    response = client.post(reverse("login"), {"username": trainer.username, "password": PASSWORD})
    assert response.status_code == 200
    assert "Too many failed logins" in response.content.decode()
    assert client.get(reverse("home")).status_code == 302


def test_successful_web_login(trainer):
    client = Client()
    response = client.post(reverse("login"), {"username": trainer.username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert client.get(reverse("home")).status_code == 200


def test_openapi_document_is_served_and_valid():
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    paths = document["paths"]
    for path in (
        "/api/v1/auth/token",
        "/api/v1/users",
        "/api/v1/users/{user_id}",
        "/api/v1/tokens",
        "/api/v1/projects",
    ):
        assert path in paths, path
    assert document["components"]["securitySchemes"]["TokenAuth"]["scheme"] == "bearer"


def test_api_docs_page_uses_no_cdn():
    page = Client().get("/api/v1/docs").content.decode()
    assert "swagger" in page.lower()
    assert "cdn." not in page and "https://" not in page.split("<body", 1)[0]


def test_errors_share_one_shape(trainer):
    api = api_as(trainer)
    cases = [
        (api.get("/api/v1/no-such-endpoint"), 404, "not_found"),
        (api.get("/api/v1/projects/999999"), 404, "not_found"),
        (ApiClient().get("/api/v1/me"), 401, "unauthenticated"),
        (api.post("/api/v1/tokens", {"name": ""}), 422, "invalid"),
        (api.post("/api/v1/projects", {"description": 5}), 422, "invalid"),
        (api.delete("/api/v1/me"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.status_code, response.content)
        error = response.json()["error"]
        assert error["code"] == code and isinstance(error["message"], str) and "details" in error


def test_unexpected_errors_hide_the_traceback(trainer, monkeypatch):
    import models_app.api

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(models_app.api, "tasks_visible_to", explode)
    response = api_as(trainer).get("/api/v1/tasks")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "server_error"
    assert "secret internals" not in response.content.decode() and "Traceback" not in response.content.decode()
