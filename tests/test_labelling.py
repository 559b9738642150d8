"""Labelling through a real Label Studio server: send, follow by webhook and poll, import, cancel, re-label.

The round trip needs Label Studio (``YMIR_TEST_LABEL_STUDIO_URL`` and ``_TOKEN``; CI starts one on loopback);
the webhook refusals, the box arithmetic and the unreachable tool need none.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from datasets import classes
from datasets import labelling as service
from datasets.labelstudio import LabelStudio
from datasets.models import Box, DatasetVersion, Labelling, LabellingItem
from models_app.models import Task
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.executors_util import until
from tests.factories import ProjectFactory, UserFactory

W, H = 80, 60


@pytest.fixture
def no_tool(settings) -> str:
    """A configured Label Studio address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.YMIR_LABEL_STUDIO_URL, settings.YMIR_LABEL_STUDIO_TOKEN = f"http://127.0.0.1:{port}", "x" * 40
    return settings.YMIR_LABEL_STUDIO_URL


def five_images(user, tmp_path) -> DatasetVersion:
    """Five 80x60 images with ground truth of the classes cat and dog (dog also answers to "puppy")."""
    classes.class_create(user=user, name="cat")
    classes.class_create(user=user, name="dog", aliases=["puppy"])
    classes.class_create(user=user, name="horse")
    project = ProjectFactory(owner=user)
    files = {}
    for i in range(5):
        files[f"images/im{i}.jpg"] = jpeg(W, H, colour=(40 * i, 90, 20))
        files[f"gt/im{i}.xml"] = voc(f"im{i}.jpg", [("cat", 5, 5, 30, 30), ("dog", 40, 10, 70, 50)])
    return import_now(user, project, name="pool", upload=make_zip(tmp_path / "pool.zip", files))


def region(label: str, x: float, y: float, w: float, h: float, rotation: float = 0.0) -> dict:
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
    }


def _ls_tasks(client: LabelStudio, labelling: Labelling) -> dict[str, dict]:
    assert labelling.ls_project_id is not None
    return {t["data"]["ymir_name"]: t for t in client.tasks(labelling.ls_project_id)}


# --- the whole round trip ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_round_trip_send_label_follow_by_webhook_import_partially_then_complete(
    label_studio, live_server, workspace, trainer, tmp_path
):
    version = five_images(trainer, tmp_path)
    labelling = service.labelling_create(
        user=trainer,
        version=version,
        class_names=["Cat", "puppy"],  # any case, aliases resolve to their class
        keep_ground_truth=True,
        labellers=["Ann@Example.com", "bob@example.com", "ann@example.com"],
        guideline_name="rules.md",
        guideline=b"# Boxes\nTight boxes, <b>whole</b> objects.",
        base_url=live_server.url,
    )
    assert labelling.labellers == ["ann@example.com", "bob@example.com"]
    assert sorted(label.name for label in labelling.labels.all()) == ["cat", "dog"]
    assert service.labelling_push(labelling.pk) == "sent"
    assert service.labelling_push(labelling.pk) == "sent"  # idempotent: nothing imported twice
    labelling.refresh_from_db()
    assert labelling.task.state == Task.State.RUNNING
    project = label_studio.project(labelling.ls_project_id)
    assert project["task_number"] == 5
    assert '<Label value="cat"/>' in project["label_config"] and '<Label value="dog"/>' in project["label_config"]
    assert "&lt;b&gt;whole&lt;/b&gt;" in project["expert_instruction"]  # the guideline shown, escaped
    tasks = _ls_tasks(label_studio, labelling)
    assert sorted(tasks) == [f"images/im{i}.jpg" for i in range(5)]
    # the image reaches Label Studio's editor from the platform at its signed URL, bytes intact
    first = tasks["images/im0.jpg"]
    answer = requests.get(first["data"]["image"], timeout=10)
    assert answer.status_code == 200
    assert hashlib.sha1(answer.content).hexdigest() == first["data"]["ymir_asset"]  # noqa: S324
    assert requests.get(first["data"]["image"][:-3] + "abc", timeout=10).status_code == 404  # forged
    # pre-annotations: the ground truth as a prediction the labeller edits
    predictions = label_studio._send("GET", f"/api/predictions/?task={first['id']}")
    values = sorted((r["value"]["rectanglelabels"][0], round(r["value"]["x"], 3)) for r in predictions[0]["result"])
    assert values == [("cat", round(100 * 5 / W, 3)), ("dog", round(100 * 40 / W, 3))]

    # labellers submit in Label Studio; each annotation's webhook updates the progress at once
    label_studio.annotation_create(tasks["images/im0.jpg"]["id"], [region("cat", 10, 10, 20, 20)])
    label_studio.annotation_create(tasks["images/im1.jpg"]["id"], [region("dog", 90, 50, 20, 30)])  # partly outside
    label_studio.annotation_create(
        tasks["images/im2.jpg"]["id"], [region("puppy", 0, 0, 50, 50), region("horse", 1, 1, 5, 5)]
    )
    label_studio.annotation_create(tasks["images/im3.jpg"]["id"], [])  # labelled: nothing to box

    def labelled_four() -> bool:
        return Labelling.objects.get(pk=labelling.pk).labelled == 4

    until(labelled_four, 10, "the webhooks")
    labelling.refresh_from_db()
    assert labelling.last_event_at is not None
    assert Task.objects.get(pk=labelling.task_id).percent == pytest.approx(0.8)

    # import what is done: a new version with exactly the submitted boxes
    first_import = service.labelling_collect(labelling.pk)
    assert first_import is not None and first_import.state == DatasetVersion.State.READY
    assert first_import.asset_count == 4
    boxes = sorted(
        (b.asset.sha1 == tasks["images/im1.jpg"]["data"]["ymir_asset"], b.label.name, b.x1, b.y1, b.x2, b.y2)
        for b in Box.objects.filter(version=first_import).select_related("label", "asset")
    )
    assert boxes == sorted(
        [
            (False, "cat", 8.0, 6.0, 24.0, 18.0),
            (True, "dog", 72.0, 30.0, 80.0, 48.0),  # clipped at the right edge (72 + 16 > 80)
            (False, "dog", 0.0, 0.0, 40.0, 30.0),  # "puppy" is dog's alias
        ]
    )
    report = first_import.report
    assert report["clipped_boxes"] == 1
    assert report["labels_not_in_targets"] == {"horse": 1}
    assert report["skipped"] == [{"file": "images/im4.jpg", "reason": "not labelled yet"}]
    assert set(first_import.parents.values_list("id", flat=True)) == {version.pk}
    # the same import again adds nothing
    assert service.labelling_collect(labelling.pk) is None
    assert DatasetVersion.objects.filter(group=first_import.group).count() == 1
    assert Box.objects.filter(version=first_import).count() == 3

    # the last image: the labelling completes, the poll imports it and ends the task
    label_studio.annotation_create(tasks["images/im4.jpg"]["id"], [region("cat", 50, 50, 10, 10)])
    until(lambda: Labelling.objects.get(pk=labelling.pk).labelled == 5, 10, "the last webhook")
    assert service.labelling_sync(labelling.pk) == "ok"
    labelling.refresh_from_db()
    assert labelling.task.state == Task.State.DONE
    second = DatasetVersion.objects.filter(group=first_import.group).order_by("-number").first()
    assert second is not None and second.number == 2 and second.asset_count == 5
    assert Box.objects.filter(version=second).count() == 4
    assert set(second.parents.values_list("id", flat=True)) == {version.pk, first_import.pk}
    # the webhook of an ended labelling goes; its images stay reachable for the grace period only
    assert service.labelling_sync(labelling.pk) == "ended"
    assert Labelling.objects.get(pk=labelling.pk).ls_webhook_id is None
    url = service.image_url(labelling, tasks["images/im4.jpg"]["data"]["ymir_asset"])
    assert requests.get(url, timeout=10).status_code == 200
    Task.objects.filter(pk=labelling.task_id).update(finished_at=timezone.now() - timedelta(days=2))
    assert requests.get(url, timeout=10).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_cancel_archives_the_project_and_relabel_sends_the_version_again(
    label_studio, live_server, workspace, trainer, tmp_path
):
    version = five_images(trainer, tmp_path)
    labelling = service.labelling_create(user=trainer, version=version, class_names=["cat"], base_url=live_server.url)
    assert service.labelling_push(labelling.pk) == "sent"
    labelling.refresh_from_db()
    client = logged_in(trainer)
    response = client.post(f"/tasks/{labelling.task_id}/cancel")  # the task page's cancel does the same
    assert response.status_code == 302
    labelling.refresh_from_db()
    assert labelling.task.state == Task.State.TERMINATED
    assert labelling.ls_webhook_id is None
    assert label_studio.project(labelling.ls_project_id)["title"].startswith("[archived] ")
    hooks = label_studio._send("GET", "/api/webhooks/", params={"project": labelling.ls_project_id})
    assert [h for h in hooks if h.get("project") == labelling.ls_project_id] == []
    assert (
        service.webhook_receive(
            labelling.pk,
            service.webhook_secret(labelling),
            {"project": {"id": labelling.ls_project_id}, "action": "ANNOTATION_CREATED"},
        )
        == "ignored"
    )

    response = client.post(f"/labellings/{labelling.pk}/relabel")
    again = Labelling.objects.exclude(pk=labelling.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/labellings/{again.pk}/"
    assert again.output_name == "pool-labelled" and again.source_id == version.pk
    assert service.labelling_push(again.pk) == "sent"
    again.refresh_from_db()
    assert again.ls_project_id not in (None, labelling.ls_project_id)
    assert label_studio.project(again.ls_project_id)["task_number"] == 5


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_tool_down_shows_unreachable_retries_and_loses_nothing(
    no_tool, settings, live_server, workspace, trainer, tmp_path
):
    version = five_images(trainer, tmp_path)
    labelling = service.labelling_create(user=trainer, version=version, class_names=["cat"], base_url=live_server.url)
    assert service.labelling_push(labelling.pk) == "unreachable"
    labelling.refresh_from_db()
    assert labelling.unreachable_since is not None and labelling.task.state == Task.State.QUEUED
    assert LabellingItem.objects.filter(labelling=labelling).count() == 5
    page = logged_in(trainer).get(f"/labellings/{labelling.pk}/")
    assert b"Labelling tool unreachable" in page.content
    assert service.labellings_poll() == 1  # the poll tries again, still down
    labelling.refresh_from_db()
    assert labelling.task.state == Task.State.QUEUED

    # a slow tool: it accepts the connection and never answers
    with socket.socket() as slow:
        slow.bind(("127.0.0.1", 0))
        slow.listen(8)
        settings.YMIR_LABEL_STUDIO_URL = f"http://127.0.0.1:{slow.getsockname()[1]}"
        settings.YMIR_LABEL_STUDIO_TIMEOUT = 0.5
        assert service.labelling_push(labelling.pk) == "unreachable"
        assert service.tool_check()[0] is False

    url, token = os.environ.get("YMIR_TEST_LABEL_STUDIO_URL", ""), os.environ.get("YMIR_TEST_LABEL_STUDIO_TOKEN", "")
    if not url:
        return  # the recovery needs the real tool
    settings.YMIR_LABEL_STUDIO_URL, settings.YMIR_LABEL_STUDIO_TOKEN = url, token
    settings.YMIR_LABEL_STUDIO_TIMEOUT = 10
    assert service.labellings_poll() == 1
    labelling.refresh_from_db()
    assert labelling.task.state == Task.State.RUNNING and labelling.unreachable_since is None
    assert LabellingItem.objects.filter(labelling=labelling, ls_task_id__isnull=False).count() == 5


@pytest.fixture
def sent(no_tool, workspace, trainer, tmp_path) -> Iterator[Labelling]:
    """A labelling as if sent: its Label Studio project is number 7 (no Label Studio needed)."""
    version = five_images(trainer, tmp_path)
    labelling = service.labelling_create(
        user=trainer, version=version, class_names=["cat"], base_url="http://testserver"
    )
    items = list(LabellingItem.objects.filter(labelling=labelling).order_by("id"))
    for n, item in enumerate(items):
        item.ls_task_id = 100 + n
    LabellingItem.objects.bulk_update(items, ["ls_task_id"])
    Labelling.objects.filter(pk=labelling.pk).update(ls_project_id=7)
    Task.objects.filter(pk=labelling.task_id).update(state=Task.State.RUNNING)
    labelling.refresh_from_db()
    yield labelling


def _hook(client, labelling_id: int, payload: dict, secret: str | None):
    headers = {"HTTP_X_YMIR_LABELLING_SECRET": secret} if secret is not None else {}
    return client.post(f"/labelling/hooks/{labelling_id}", payload, content_type="application/json", **headers)


@pytest.mark.django_db
def test_webhooks_without_the_secret_are_refused_and_others_ignored(sent, client, trainer, tmp_path):
    secret = service.webhook_secret(sent)
    created = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 7},
        "task": {"id": 100, "total_annotations": 1},
        "annotation": {"id": 1, "task": 100},
    }
    assert _hook(client, sent.pk, created, None).status_code == 403
    assert _hook(client, sent.pk, created, "wrong").status_code == 403
    assert Labelling.objects.get(pk=sent.pk).labelled == 0
    # another project of Label Studio, an unknown labelling: ignored (and logged)
    assert _hook(client, sent.pk, {**created, "project": {"id": 8}}, secret).json() == {"status": "ignored"}
    assert _hook(client, 99999, created, secret).json() == {"status": "ignored"}
    # another user's labelling with this one's secret: refused
    other_user = UserFactory()
    other = service.labelling_create(
        user=other_user,
        version=import_now(
            other_user,
            ProjectFactory(owner=other_user),
            name="x",
            upload=make_zip(tmp_path / "x.zip", {"images/a.jpg": jpeg()}),
        ),
        class_names=["cat"],
        base_url="http://testserver",
    )
    Labelling.objects.filter(pk=other.pk).update(ls_project_id=7)
    assert _hook(client, other.pk, created, secret).status_code == 403
    assert Labelling.objects.get(pk=sent.pk).labelled == 0
    assert _hook(client, sent.pk, b"not json", secret).status_code == 400
    # with the secret: progress at once
    assert _hook(client, sent.pk, created, secret).json() == {"status": "ok"}
    sent.refresh_from_db()
    assert sent.labelled == 1 and Task.objects.get(pk=sent.task_id).percent == pytest.approx(0.2)
    # an event that comes before the push mapped its task: the image's sha1 in the task data finds it
    unmapped = LabellingItem.objects.filter(labelling=sent).exclude(ls_task_id=100).select_related("asset").first()
    assert unmapped is not None
    LabellingItem.objects.filter(pk=unmapped.pk).update(ls_task_id=None)
    early = {**created, "task": {"id": 555, "data": {"ymir_asset": unmapped.asset.sha1}}, "annotation": {"id": 9}}
    assert _hook(client, sent.pk, early, secret).json() == {"status": "ok"}
    assert (
        LabellingItem.objects.get(pk=unmapped.pk).ls_task_id == 555 and Labelling.objects.get(pk=sent.pk).labelled == 2
    )


@pytest.mark.django_db
def test_labelling_input_is_checked_and_only_the_owner_reaches_it(sent, trainer, settings):
    version = sent.source
    for kwargs, code in [
        ({"class_names": []}, "no_classes"),
        ({"class_names": ["zebra"]}, "unknown_classes"),
        ({"class_names": ["cat"], "labellers": ["not-an-email"]}, "invalid_email"),
        ({"class_names": ["cat"], "guideline_name": "rules.pdf", "guideline": b"%PDF"}, "invalid_guideline"),
        ({"class_names": ["cat"], "guideline_name": "rules.md", "guideline": b"\xff\xfe"}, "invalid_guideline"),
        ({"class_names": ["cat"], "prediction_set_id": 12345}, "invalid_prediction_set"),
        ({"class_names": ["cat"], "output_name": "pool"}, "dataset_name_taken"),
    ]:
        with pytest.raises(Exception) as caught:
            service.labelling_create(user=trainer, version=version, base_url="http://testserver", **kwargs)
        assert getattr(caught.value, "code", None) == code, kwargs
    stranger = UserFactory()
    with pytest.raises(Exception) as caught:
        service.labelling_create(user=stranger, version=version, class_names=["cat"], base_url="http://x")
    assert getattr(caught.value, "code", None) == "not_your_project"
    assert logged_in(stranger).get(f"/labellings/{sent.pk}/").status_code == 404
    assert logged_in(stranger).post(f"/labellings/{sent.pk}/import").status_code == 404
    assert api_as(stranger).get(f"/api/v1/labellings/{sent.pk}").status_code == 404
    owner = api_as(trainer).get(f"/api/v1/labellings/{sent.pk}")
    assert owner.status_code == 200 and owner.json()["total"] == 5 and owner.json()["classes"] == ["cat"]
    api = api_as(trainer)
    created = api.post(
        f"/api/v1/datasets/{version.pk}/labellings",
        {"classes": ["cat"], "output_name": "via-api", "labellers": ["a@b.co"]},
    )
    assert created.status_code == 201, created.content
    assert created.json()["state"] == "queued" and created.json()["labellers"] == ["a@b.co"]
    bad = api.post(f"/api/v1/datasets/{version.pk}/labellings", {"classes": ["zebra"]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_classes"
    assert api.post(f"/api/v1/labellings/{sent.pk}/import").status_code == 202
    assert api_as(stranger).post(f"/api/v1/labellings/{sent.pk}/cancel").status_code == 404
    assert api.post(f"/api/v1/labellings/{sent.pk}/cancel").status_code == 202
    assert api.post(f"/api/v1/labellings/{sent.pk}/cancel").json()["error"]["code"] == "ended"
    settings.YMIR_LABEL_STUDIO_URL = ""
    with pytest.raises(Exception) as caught:
        service.labelling_create(user=trainer, version=version, class_names=["cat"], base_url="http://x")
    assert getattr(caught.value, "code", None) == "no_labelling_tool"


@pytest.mark.django_db
def test_the_labelling_page_and_the_dataset_row_show_the_progress(sent, trainer):
    client = logged_in(trainer)
    LabellingItem.objects.filter(labelling=sent, ls_task_id__in=[100, 101]).update(labelled=True)
    service._recount(sent.pk)
    page = client.get(f"/labellings/{sent.pk}/").content.decode()
    assert "labelled 2 of 5" in page and 'href="http://127.0.0.1:' in page and "/projects/7/data" in page
    project = client.get(f"/projects/{sent.source.group.project_id}/").content.decode()
    assert "labelled 2 of 5" in project


@pytest.mark.django_db
def test_only_admins_set_the_labelling_tool(trainer, admin_user):
    assert logged_in(trainer).get("/manage/labelling/").status_code == 403
    assert api_as(trainer).get("/api/v1/labelling-tool").status_code == 403
    admin = logged_in(admin_user)
    assert admin.post("/manage/labelling/", {"url": "ftp://x", "token": "t"}).status_code == 422
    assert admin.post("/manage/labelling/", {"url": "http://127.0.0.1:9", "token": "abc"}).status_code == 302
    assert service.tool_settings() == ("http://127.0.0.1:9", "abc")
    admin.post("/manage/labelling/", {"url": "http://127.0.0.1:9", "token": ""})  # blank keeps the token
    assert service.tool_settings() == ("http://127.0.0.1:9", "abc")
    checked = api_as(admin_user).post("/api/v1/labelling-tool/check")
    assert checked.status_code == 200 and checked.json()["check_ok"] is False
    assert "unreachable" in checked.json()["check_message"]


def test_label_studio_rectangles_become_pixel_boxes_clipped_to_the_image():
    assert service.ls_box({"x": 10, "y": 20, "width": 50, "height": 25}, 200, 100) == ((20.0, 20.0, 120.0, 45.0), False)
    assert service.ls_box({"x": 90, "y": -10, "width": 20, "height": 20}, 100, 100) == ((90.0, 0.0, 100.0, 10.0), True)
    assert service.ls_box({"x": 120, "y": 0, "width": 5, "height": 5}, 100, 100) is None  # wholly outside
    assert service.ls_box({"x": "nan", "y": 0, "width": 5, "height": 5}, 100, 100) is None
    assert service.ls_box({"x": 1}, 100, 100) is None
    # rotated 90° about its top-left corner: a 40x10 box at (50, 20) stands up to the left of it
    (x1, y1, x2, y2), clipped = service.ls_box({"x": 50, "y": 20, "width": 40, "height": 10, "rotation": 90}, 100, 100)
    assert [round(v, 6) for v in (x1, y1, x2, y2)] == [40.0, 20.0, 50.0, 60.0] and not clipped
    rotated = service.ls_box({"x": 0, "y": 0, "width": 10, "height": 10, "rotation": 45}, 100, 100)
    assert rotated is not None and math.isclose(rotated[0][0], 0.0, abs_tol=1e-9) and rotated[1]  # clipped at x=0


def test_a_personal_access_token_works_as_well_as_a_legacy_one(label_studio, tmp_path_factory):
    """Label Studio's personal access tokens (JWT refresh tokens) are exchanged for access tokens by the client."""
    from datasets.labelstudio import ToolRefused

    kept = Path(tempfile.gettempdir()) / f"ymir-test-ls-pat-{hashlib.sha1(label_studio.url.encode()).hexdigest()[:8]}"  # noqa: S324
    try:
        pat = str(label_studio._send("POST", "/api/token/")["token"])
        kept.write_text(pat)
    except ToolRefused as exc:  # one per user: made by an earlier run against the same server
        assert exc.status == 409 and kept.exists(), exc
        pat = kept.read_text()
    client = LabelStudio(label_studio.url, pat)
    assert client.whoami()["email"] == label_studio.whoami()["email"]
    assert client.version()
    with pytest.raises(ToolRefused):
        LabelStudio(label_studio.url, pat[:-4] + "AAAA").whoami()  # a forged signature is refused
