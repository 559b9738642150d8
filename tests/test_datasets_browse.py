"""Browsing: filters, keyset paging, random images, the image page, the assets API, and query counts."""

from __future__ import annotations

import pytest
from django.urls import reverse

from datasets import classes
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(trainer, workspace, tmp_path):
    classes.class_create(user=trainer, name="red", aliases=["scarlet"])
    classes.class_create(user=trainer, name="blue")
    files = {}
    for i in range(9):
        files[f"images/{i}.jpg"] = jpeg(colour=(i * 25, 200 - i * 20, 40))
        if i % 3 == 0:
            files[f"gt/{i}.xml"] = voc(f"{i}.jpg", [("red", 1, 1, 9, 9)]).replace(
                b"<annotation>", b"<annotation><tags><camera>north</camera></tags>"
            )
        elif i % 3 == 1:
            files[f"gt/{i}.xml"] = voc(f"{i}.jpg", [("blue", 2, 2, 8, 8), ("blue", 3, 3, 9, 9)])
        files[f"pred/{i}.xml"] = voc(f"{i}.jpg", [("red", 1, 1, 9, 9)]).replace(
            b"</name>", b"</name><score>0.5</score>"
        )
    return import_now(trainer, ProjectFactory(owner=trainer), upload=make_zip(tmp_path / "b.zip", files))


def test_assets_api_filters_and_pages(trainer, version):
    api = api_as(trainer)
    url = f"/api/v1/datasets/{version.pk}/assets"
    assert len(api.get(f"{url}?label=scarlet").json()["items"]) == 9  # every image has a red prediction
    assert len(api.get(f"{url}?label=blue").json()["items"]) == 3
    assert len(api.get(f"{url}?kind=unlabelled").json()["items"]) == 3
    assert len(api.get(f"{url}?kind=gt").json()["items"]) == 6
    assert len(api.get(f"{url}?kind=pred").json()["items"]) == 9
    tagged = api.get(f"{url}?tag=camera=north").json()["items"]
    assert len(tagged) == 3 and all(i["tags"] == {"camera": "north"} for i in tagged)
    first = api.get(f"{url}?limit=4").json()
    second = api.get(f"{url}?limit=4&cursor={first['next']}").json()
    third = api.get(f"{url}?limit=4&cursor={second['next']}").json()
    ids = [i["asset_id"] for page in (first, second, third) for i in page["items"]]
    assert len(ids) == len(set(ids)) == 9 and third["next"] is None
    blue = next(i for i in api.get(f"{url}?label=blue").json()["items"])
    assert sorted(b["label"] for b in blue["boxes"]) == ["blue", "blue", "red"]
    assert api.get(f"{url}?label=purple").status_code == 422
    assert api.get(f"{url}?tag=nokey").status_code == 422


def test_dataset_page_filters_random_and_image_page(trainer, version):
    client = logged_in(trainer)
    url = reverse("dataset_detail", args=[version.pk])
    assert client.get(f"{url}?kind=unlabelled").content.decode().count("<figure") == 3
    assert client.get(f"{url}?tag=camera%3Dnorth").content.decode().count("<figure") == 3
    random_page = client.get(f"{url}?random=1").content.decode()
    assert 1 <= random_page.count("<figure") <= 9
    item = version.items.filter(tags__camera="north").first()
    page = client.get(reverse("asset_detail", args=[version.pk, item.asset_id])).content.decode()
    assert "camera=north" in page and page.count("<rect") == 2 and "0.500" in page
    other = logged_in(ProjectFactory().owner)
    assert other.get(reverse("asset_detail", args=[version.pk, item.asset_id])).status_code == 404


def test_dataset_page_query_count_does_not_grow_with_images(trainer, version, django_assert_max_num_queries):
    client = logged_in(trainer)
    with django_assert_max_num_queries(14):
        client.get(reverse("dataset_detail", args=[version.pk]))
