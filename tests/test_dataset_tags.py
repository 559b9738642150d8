"""Editing asset and box tags, filtering by box tags, and the public datasets page (copy into a project)."""

from __future__ import annotations

import pytest

from datasets.models import Box, DatasetAsset, DatasetVersion
from tests.conftest import api_as, logged_in
from tests.executors_util import small_datasets
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(tmp_path, workspace):
    user = UserFactory()
    project, train, _val = small_datasets(user, tmp_path)
    return user, project, train


def test_tags_are_edited_through_the_api_and_filter_the_browser(data):
    user, _project, train = data
    api = api_as(user)
    item = DatasetAsset.objects.filter(version=train).order_by("id").first()
    assert item is not None
    response = api.patch(
        f"/api/v1/datasets/{train.pk}/assets/{item.asset_id}/tags", {"set": {"weather": "rain", "n": 3}}
    )
    assert response.status_code == 200 and response.json() == {"weather": "rain", "n": "3"}
    response = api.patch(f"/api/v1/datasets/{train.pk}/assets/{item.asset_id}/tags", {"remove": ["n"]})
    assert response.json() == {"weather": "rain"}

    box = Box.objects.filter(version=train, asset_id=item.asset_id, label__name="b").get()
    response = api.patch(f"/api/v1/datasets/{train.pk}/boxes/{box.pk}/tags", {"set": {"occluded": "yes"}})
    assert response.status_code == 200 and response.json()["occluded"] == "yes"
    assert response.json()["difficult"] == "1"  # imported VOC tags are kept

    client = logged_in(user)
    page = client.get(f"/datasets/{train.pk}/", {"boxtag": "occluded=yes"}).content.decode()
    assert page.count('<figure class="asset">') == 1
    page = client.get(f"/datasets/{train.pk}/", {"tag": "weather=rain"}).content.decode()
    assert page.count('<figure class="asset">') == 1

    # through the image page's form: set, then remove with an empty value
    url = f"/datasets/{train.pk}/assets/{item.asset_id}"
    client.post(f"{url}/tags", {"key": "light", "value": "dusk"})
    item.refresh_from_db()
    assert item.tags == {"weather": "rain", "light": "dusk"}
    client.post(f"{url}/tags", {"key": "light", "value": ""})
    item.refresh_from_db()
    assert item.tags == {"weather": "rain"}


def test_bad_tags_and_other_peoples_datasets_are_refused(data):
    user, _project, train = data
    item = DatasetAsset.objects.filter(version=train).first()
    assert item is not None
    api = api_as(user)
    url = f"/api/v1/datasets/{train.pk}/assets/{item.asset_id}/tags"
    for body in (
        {"set": {"bad key": "x"}},
        {"set": {"k": "x" * 201}},
        {"set": {"k": {"nested": 1}}},
        {"set": {"1k": "x"}},
    ):
        response = api.patch(url, body)
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_tag", body
    item.refresh_from_db()
    assert item.tags == {}
    assert api.patch(f"/api/v1/datasets/{train.pk}/boxes/999999/tags", {"set": {"a": "b"}}).status_code == 422
    stranger = api_as(UserFactory())
    assert stranger.patch(url, {"set": {"a": "b"}}).status_code == 404
    # public: others see it but cannot edit its tags
    train.is_public = True
    train.save()
    assert stranger.patch(url, {"set": {"a": "b"}}).status_code == 403


def test_public_datasets_are_listed_and_copied_into_ones_own_project(data, django_capture_on_commit_callbacks):
    from datasets.services import import_execute

    user, _project, train = data
    train.is_public = True
    train.save()
    other = UserFactory()
    mine = ProjectFactory(owner=other)
    client = logged_in(other)
    page = client.get("/datasets/public/").content.decode()
    assert f"/datasets/{train.pk}/" in page and user.username in page
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/datasets/public/", {"dataset": train.pk, "project": mine.pk, "name": "borrowed"})
    copy = DatasetVersion.objects.get(group__project=mine)
    assert response.status_code == 302 and response["Location"] == f"/datasets/{copy.pk}/"
    assert copy.task is not None
    import_execute(copy.task.pk)
    copy.refresh_from_db()
    assert copy.state == "ready" and copy.asset_count == train.asset_count and copy.gt_box_count == train.gt_box_count
    # a private dataset, or someone else's project, is not reachable
    train.is_public = False
    train.save()
    assert client.post("/datasets/public/", {"dataset": train.pk, "project": mine.pk}).status_code == 404
    train.is_public = True
    train.save()
    assert client.post("/datasets/public/", {"dataset": train.pk, "project": _project.pk}).status_code == 404
