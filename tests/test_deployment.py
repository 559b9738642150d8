"""Deployment: publish, the HTTP inference service and its limits, int8 quantisation compared, review, field
images, and the device agent as a second process. A graph with the served convention and no learning
(``fixtures/tiny_detector.onnx``: two fixed boxes scored by the image's brightness) keeps these fast; the test
with a model trained by the default detector is in ``test_deployment_trained.py``."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from django.test import Client
from django.urls import resolve
from PIL import Image

from core.tokens import token_issue, token_revoke
from datasets import classes
from deployment import services
from deployment.models import Algorithm, Device, FieldImage
from models_app import landing
from models_app.models import ModelGroup, ModelStage, ModelVersion
from tests.conftest import ROOT, ApiClient, api_as, free_port, logged_in
from tests.datasets_util import import_now, jpeg, make_zip, png_header_only, voc
from tests.executors_util import until
from tests.factories import ProjectFactory, UserFactory

TINY = Path(__file__).with_name("fixtures") / "tiny_detector.onnx"


def image_bytes(shade: int, size: tuple[int, int] = (128, 96), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (shade, shade, shade)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def stage(workspace, trainer, tmp_path) -> ModelStage:
    return tiny_stage(trainer, tmp_path)


def tiny_stage(trainer, tmp_path) -> ModelStage:
    """A model of the user's project whose stage is the tiny graph, validated on 4 annotated images."""
    classes.class_create(user=trainer, name="cat")
    classes.class_create(user=trainer, name="dog")
    project = ProjectFactory(owner=trainer)
    files = {}
    for i in range(4):
        files[f"images/v{i}.jpg"] = jpeg(128, 96, colour=(200, 200 - 10 * i, 200))
        files[f"gt/v{i}.xml"] = voc(f"v{i}.jpg", [("cat", 8, 8, 60, 60)])
    val = import_now(trainer, project, name="val", upload=make_zip(tmp_path / "val.zip", files))
    group = ModelGroup.objects.create(project=project, name="tiny")
    version = ModelVersion.objects.create(group=group, number=1, class_names=["cat", "dog"], val_version=val)
    folder = landing.model_dir(version.pk)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TINY, folder / "model.onnx")
    return ModelStage.objects.create(version=version, name="best", files=["model.onnx"], metrics={"AP": 0.5})


def _publish(user, stage_id: int, **extra) -> dict:
    answer = api_as(user).post("/api/v1/algorithms", {"stage_id": stage_id, "name": "tiny", **extra})
    assert answer.status_code == 201, answer.content
    return answer.json()


def _predict(api: ApiClient, algorithm_id: int, data: bytes, content_type: str = "image/png", query: str = ""):
    return api.client.post(
        f"/api/v1/algorithms/{algorithm_id}/predict{query}",
        data=data,
        content_type=content_type,
        headers=api._headers(),
    )


@pytest.mark.django_db
def test_publish_and_predict_every_way_with_the_service_limits(stage, trainer, settings):
    algorithm = _publish(trainer, stage.pk)
    assert algorithm["class_names"] == ["cat", "dog"] and algorithm["image_size"] == 64
    assert algorithm["card"]["metrics"] == {"AP": 0.5} and algorithm["visibility"] == "private"
    api = api_as(trainer)
    url = f"/api/v1/algorithms/{algorithm['id']}/predict"
    bright = image_bytes(200)
    raw = _predict(api, algorithm["id"], bright)
    assert raw.status_code == 200, raw.content
    boxes = raw.json()["results"][0]["boxes"]
    # 128x96 scaled to 64 (factor 0.5): the fixed boxes in original pixels; scores from the brightness
    assert [(b["class_name"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in boxes] == [
        ("cat", 8.0, 8.0, 60.0, 60.0),
        ("dog", 40.0, 20.0, 120.0, 96.0),
    ]
    assert raw.json()["timing_ms"]["inference"] >= 0
    multipart = api.post_multipart(url, {"image": io.BytesIO(bright)})
    assert multipart.json()["results"][0]["boxes"] == boxes
    b64 = api.post(url, {"image_base64": base64.b64encode(bright).decode()})
    assert b64.json()["results"][0]["boxes"] == boxes
    batch = api.post(url, {"images": [{"image_base64": base64.b64encode(bright).decode()}] * 2})
    assert [r["boxes"] for r in batch.json()["results"]] == [boxes, boxes]
    strict = _predict(api, algorithm["id"], bright, query="?score_threshold=0.5")
    assert [b["class_name"] for b in strict.json()["results"][0]["boxes"]] == ["cat"]

    # bad input
    assert _predict(api, algorithm["id"], b"plain text").json()["error"]["code"] == "invalid_image"
    truncated = jpeg(128, 96)[:300]
    assert _predict(api, algorithm["id"], truncated, "image/jpeg").status_code == 422
    bomb = _predict(api, algorithm["id"], png_header_only(30000, 30000))
    assert bomb.status_code == 422 and "too large" in bomb.json()["error"]["message"]
    huge = _predict(api, algorithm["id"], b"\0" * (100 << 20), "application/octet-stream")
    assert huge.status_code == 413
    for address in ("http://127.0.0.1:8000/x.png", "http://169.254.169.254/latest", "http://[::1]/a.png"):
        refused = api.post(url, {"url": address})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "url_refused", address
    assert Client().post(url, data=bright, content_type="image/png").status_code == 401
    token, secret = token_issue(user=trainer, name="ci", kind="personal", days=None)
    token_revoke(user=trainer, token_id=token.pk)
    assert _predict(ApiClient(secret), algorithm["id"], bright).status_code == 401
    stranger = api_as(UserFactory())
    assert _predict(stranger, algorithm["id"], bright).status_code == 404
    assert stranger.get(f"/api/v1/algorithms/{algorithm['id']}").status_code == 404

    # one token beyond its rate: 429; the service stays up for others
    settings.YMIR_PREDICT_RATE = 3
    busy = api_as(trainer)
    codes = [_predict(busy, algorithm["id"], bright).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = _predict(busy, algorithm["id"], bright)
    assert int(limited["Retry-After"]) >= 1
    assert _predict(api_as(trainer), algorithm["id"], bright).status_code == 200


def test_the_rate_count_is_per_key_and_expires_with_its_window(settings):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    from core.errors import Throttled

    settings.YMIR_PREDICT_RATE, settings.YMIR_PREDICT_RATE_WINDOW = 2, 3600
    services.rate_check("probe-a")
    services.rate_check("probe-a")
    with pytest.raises(Throttled):
        services.rate_check("probe-a")
    services.rate_check("probe-b")  # another token has its own count
    backend = caches["default"]
    if isinstance(backend, RedisCache):  # the one-round-trip count sets the expiry (no key lives forever)
        import time

        key = backend.make_and_validate_key(f"ymir:predict:probe-a:{int(time.time() // 3600)}")
        client = backend._cache.get_client(key)
        assert int(client.get(key)) == 3 and 0 < client.ttl(key) <= 3601


@pytest.mark.django_db
def test_a_token_the_service_remembers_stops_working_once_revoked_or_its_user_deactivated(stage, trainer, admin_user):
    algorithm = _publish(trainer, stage.pk)
    bright = image_bytes(200)
    revoked = api_as(trainer)
    assert _predict(revoked, algorithm["id"], bright).status_code == 200  # now remembered by this process
    assert revoked.client.delete("/api/v1/auth/token", headers=revoked._headers()).status_code == 204
    assert _predict(revoked, algorithm["id"], bright).status_code == 401
    _personal, secret = token_issue(user=trainer, name="script", kind="personal", days=None)
    script = ApiClient(secret)
    assert _predict(script, algorithm["id"], bright).status_code == 200
    answer = api_as(admin_user).patch(f"/api/v1/users/{trainer.pk}", {"is_active": False})
    assert answer.status_code == 200, answer.content
    assert _predict(script, algorithm["id"], bright).status_code == 401


@pytest.mark.django_db
def test_the_inference_service_process_serves_the_api_alone(stage, trainer, settings):
    from ymir import settings_serving

    settings.ROOT_URLCONF, settings.MIDDLEWARE = settings_serving.ROOT_URLCONF, settings_serving.MIDDLEWARE
    algorithm = _publish(trainer, stage.pk)
    api = api_as(trainer)
    answer = _predict(api, algorithm["id"], image_bytes(200))
    assert answer.status_code == 200 and len(answer.json()["results"][0]["boxes"]) == 2
    huge = _predict(api, algorithm["id"], b"\0" * (100 << 20), "application/octet-stream")
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    chinese = api.client.post(
        f"/api/v1/algorithms/{algorithm['id']}/predict",
        data=b"plain text",
        content_type="image/png",
        headers={**api._headers(), "Accept-Language": "zh-hans"},
    )
    assert chinese.status_code == 422 and "图片" in chinese.json()["error"]["message"]
    assert chinese["Content-Language"] == "zh-hans" and "Accept-Language" in chinese["Vary"]
    english = _predict(api, algorithm["id"], b"plain text", "image/png")  # the last caller's language does not stick
    assert english.status_code == 422 and "image" in english.json()["error"]["message"]
    assert english["Content-Language"] == "en"
    assert Client().get("/healthz").status_code == 200
    page = Client().get("/projects/")
    assert page.status_code == 404 and page.json()["error"]["code"] == "not_found"  # no pages here
    assert Client().get("/accounts/login/").status_code == 404


def test_the_predict_route_is_tried_first_and_every_route_kept():
    from ymir.api import api, api_urls

    ordered, _app, _namespace = api_urls()
    assert ordered[0].name == "algorithm_predict"  # Django tries patterns in order: the hot path first
    assert sorted(str(p.pattern) for p in ordered) == sorted(str(p.pattern) for p in api.urls[0])
    assert resolve("/api/v1/algorithms/7/predict").url_name == "algorithm_predict"
    assert resolve("/api/v1/algorithms/7").url_name != "algorithm_predict"


def _environ(algorithm_id: int, body: bytes, secret: str, content_type: str = "image/png", query: str = "", **extra):
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/api/v1/algorithms/{algorithm_id}/predict",
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        **extra,
    }


class _Served:
    """The inference service's WSGI stack (the fast path in front of Django's handler, serving settings);
    ``by_django`` counts the requests the fast path handed on."""

    def __init__(self) -> None:
        from django.core.handlers.wsgi import WSGIHandler

        from deployment.fastpath import FastPredict

        self.handler, self.by_django = WSGIHandler(), 0
        self.app = FastPredict(self._django)

    def _django(self, environ, start_response):
        self.by_django += 1
        return self.handler(environ, start_response)

    def __call__(self, environ, app=None) -> tuple[int, dict[str, str], bytes]:
        """One request; the connection checks off as the test client has them (they would end the test's
        transaction)."""
        from django.core import signals
        from django.db import close_old_connections

        answer: list = []
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            body = b"".join((app or self.app)(environ, lambda status, headers: answer.extend([status, headers])))
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)
        return int(answer[0].split()[0]), dict(answer[1]), body


@pytest.fixture
def serving(settings):
    from ymir import settings_serving

    settings.ROOT_URLCONF, settings.MIDDLEWARE = settings_serving.ROOT_URLCONF, settings_serving.MIDDLEWARE
    return _Served()


@pytest.mark.django_db
def test_the_fast_path_answers_plain_predictions_as_django_does(stage, trainer, serving):
    algorithm = _publish(trainer, stage.pk)
    _token, secret = token_issue(user=trainer, name="camera", kind="personal", days=None)
    bright = image_bytes(200)
    status, headers, body = serving(_environ(algorithm["id"], bright, secret, query="score_threshold=0.3"))
    assert status == 200 and serving.by_django == 0
    environ = _environ(algorithm["id"], bright, secret, query="score_threshold=0.3")
    django_status, django_headers, django_body = serving(environ, app=serving.handler)
    assert django_status == 200
    fast, slow = json.loads(body), json.loads(django_body)
    assert fast["results"] == slow["results"] and len(fast["results"][0]["boxes"]) == 2
    assert set(fast["timing_ms"]) == set(slow["timing_ms"]) and fast["algorithm"] == slow["algorithm"]
    assert {k: v for k, v in headers.items() if k != "Content-Length"} == {
        k: v for k, v in django_headers.items() if k != "Content-Length"
    }
    assert int(headers["Content-Length"]) == len(body)
    capped = json.loads(serving(_environ(algorithm["id"], bright, secret, query="max_boxes=1"))[2])
    assert len(capped["results"][0]["boxes"]) == 1 and serving.by_django == 0


@pytest.mark.django_db
def test_the_fast_path_hands_everything_else_to_django(stage, trainer, serving, settings):
    algorithm = _publish(trainer, stage.pk)
    _token, secret = token_issue(user=trainer, name="camera", kind="personal", days=None)
    bright = image_bytes(200)
    for handed, (environ, status, code) in enumerate(
        (
            (_environ(algorithm["id"], bright, "ymir_notarealtoken"), 401, "unauthenticated"),
            (_environ(algorithm["id"], bright, secret, HTTP_AUTHORIZATION=""), 401, "unauthenticated"),
            (_environ(algorithm["id"] + 1000, bright, secret), 404, "not_found"),
            (_environ(algorithm["id"], b"plain text", secret), 422, "invalid_image"),
            (_environ(algorithm["id"], bright, secret, query="max_boxes=0"), 422, "invalid_max_boxes"),
            (_environ(algorithm["id"], bright, secret, query="max_boxes=many"), 422, "invalid"),
            (_environ(algorithm["id"], bright, secret, query="unknown=1"), 200, None),
            (_environ(algorithm["id"], bright, secret, HTTP_ACCEPT_LANGUAGE="zh-hans"), 200, None),
            (_environ(algorithm["id"], b"\0" * 64, secret, CONTENT_LENGTH=str(100 << 20)), 413, "too_large"),
        ),
        start=1,
    ):
        status_got, _headers, body = serving(environ)
        assert (status_got, serving.by_django) == (status, handed), body
        if code:
            assert json.loads(body)["error"]["code"] == code
    chinese = serving(_environ(algorithm["id"], b"plain text", secret, HTTP_ACCEPT_LANGUAGE="zh-hans"))
    assert chinese[0] == 422 and "图片" in json.loads(chinese[2])["error"]["message"]
    assert chinese[1]["Content-Language"] == "zh-hans"

    # a request the fast path counted and then handed on is not counted twice; over the limit stays 429
    settings.YMIR_PREDICT_RATE = 2
    _token, fresh = token_issue(user=trainer, name="metered", kind="personal", days=None)
    codes = [serving(_environ(algorithm["id"], data, fresh))[0] for data in (b"plain text", bright, bright, bright)]
    assert codes == [422, 200, 429, 429]


@pytest.mark.django_db
def test_a_submission_is_invisible_to_others_until_an_admin_approves(stage, trainer, admin_user):
    algorithm = _publish(trainer, stage.pk)
    other = api_as(UserFactory())
    path = f"/api/v1/algorithms/{algorithm['id']}"
    assert api_as(trainer).post(f"{path}/submit").json()["visibility"] == "pending"
    assert other.get(path).status_code == 404
    assert other.post(f"{path}/review", {"approve": True}).status_code == 403
    assert "tiny" not in logged_in(UserFactory()).get("/algorithms/").content.decode()
    admin = api_as(admin_user)
    assert admin.post(f"{path}/review", {"approve": False}).json()["error"]["code"] == "reason_required"
    assert admin.post(f"{path}/review", {"approve": True}).json()["visibility"] == "public"
    assert other.get(path).status_code == 200
    assert _predict(other, algorithm["id"], image_bytes(200)).status_code == 200
    page = logged_in(UserFactory()).get(f"/algorithms/{algorithm['id']}/").content.decode()
    assert "Try it" in page and "Publishing and the field images" not in page  # others try, only the owner manages
    tried = logged_in(UserFactory()).post(
        f"/algorithms/{algorithm['id']}/", {"action": "try", "image": io.BytesIO(image_bytes(200))}
    )
    assert 'id="tried-count"' in tried.content.decode() and "2 boxes" in tried.content.decode()


@pytest.mark.django_db
def test_int8_quantisation_is_measured_beside_the_float_graph(stage, trainer):
    algorithm = Algorithm.objects.get(pk=_publish(trainer, stage.pk)["id"])
    report = services.quantize_and_compare(algorithm.pk)
    assert report["state"] == "done"
    assert report["float"]["images"] == 4 and report["int8"]["images"] == 4
    assert 0 < report["float"]["AP50"] <= 1 and report["int8"]["AP50"] == pytest.approx(
        report["float"]["AP50"], abs=0.05
    )
    page = logged_in(trainer).get(f"/algorithms/{algorithm.pk}/").content.decode()
    assert 'class="float-map"' in page and 'class="int8-map"' in page
    api = api_as(trainer)
    assert api.patch(f"/api/v1/algorithms/{algorithm.pk}", {"use_quantized": True}).json()["quantized"] is True
    assert Algorithm.objects.get(pk=algorithm.pk).file.endswith("model.int8.onnx")
    assert _predict(api, algorithm.pk, image_bytes(200)).status_code == 200


@pytest.mark.django_db
def test_low_confidence_field_images_are_kept_sampled_capped_and_collected(stage, trainer):
    algorithm = Algorithm.objects.get(pk=_publish(trainer, stage.pk)["id"])
    Algorithm.objects.filter(pk=algorithm.pk).update(
        keep_field_images=True, field_threshold=0.5, field_rate=1.0, field_cap=2
    )
    api = api_as(trainer)
    for shade in (250, 10, 20, 30):  # bright: confident, not kept; three dark ones, cap 2
        assert _predict(api, algorithm.pk, image_bytes(shade, fmt="JPEG"), "image/jpeg").status_code == 200
    assert FieldImage.objects.filter(algorithm=algorithm).count() == 2
    collected = api.post(f"/api/v1/algorithms/{algorithm.pk}/field-images/collect")
    assert collected.status_code == 201 and collected.json()["images"] == 2
    again = api.post(f"/api/v1/algorithms/{algorithm.pk}/field-images/collect")
    assert again.status_code == 409


@pytest.mark.django_db(transaction=True)
def test_the_device_agent_registers_serves_and_stops_when_switched_off(stage, trainer, live_server, settings, tmp_path):
    settings.YMIR_DEVICE_HEARTBEAT_SECONDS = 1
    algorithm = _publish(trainer, stage.pk)
    created = api_as(trainer).post("/api/v1/devices", {"name": "edge-1", "kind": "Jetson", "location": "line 3"})
    assert created.status_code == 201
    device_id, token = created.json()["device"]["id"], created.json()["token"]
    other_device, other_token = services.device_add(user=trainer, name="edge-2")
    refused = Client().post(
        f"/api/v1/devices/{device_id}/agent/heartbeat",
        {},
        content_type="application/json",
        headers={"X-Device-Token": other_token},
    )
    assert refused.status_code == 403  # a device token used for another device
    port = free_port()
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployment.agent",
            "--server",
            live_server.url,
            "--device",
            str(device_id),
            "--token",
            token,
            "--port",
            str(port),
            "--cache",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "agent.log").open("w"),
    )
    try:
        until(lambda: Device.objects.get(pk=device_id).registered_at is not None, 30, "the agent to register")
        page = logged_in(trainer).get(f"/devices/{device_id}/").content.decode()
        assert 'id="device-online"' in page and "online" in page
        logged_in(trainer).post(f"/devices/{device_id}/", {"algorithm": algorithm["id"], "action": "on"})
        until(lambda: Device.objects.get(pk=device_id).status.get("serving") == [algorithm["id"]], 30, "the assignment")

        def agent_predict() -> tuple[int, dict]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/algorithms/{algorithm['id']}/predict",
                data=image_bytes(200),
                headers={"Content-Type": "image/png"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, answer = agent_predict()
        platform = _predict(api_as(trainer), algorithm["id"], image_bytes(200)).json()
        assert status == 200 and answer["results"][0]["boxes"] == platform["results"][0]["boxes"]
        # switched off in the algorithm center: the agent stops serving it
        logged_in(trainer).post(f"/devices/{device_id}/", {"algorithm": algorithm["id"], "action": "off"})
        until(lambda: agent_predict()[0] == 404, 30, "the agent to stop serving")
        assert Device.objects.get(pk=device_id).last_seen is not None
        assert Device.objects.get(pk=other_device.pk).registered_at is None
    finally:
        agent.terminate()
        agent.wait(timeout=30)
