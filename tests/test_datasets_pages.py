"""Dataset and class pages, rendered server-side."""

from __future__ import annotations

import pytest
from django.urls import reverse

from datasets import classes
from datasets.demo import write_voc_zip_with_pred
from datasets.models import DatasetVersion, LabelClass
from datasets.services import import_execute
from tests.conftest import logged_in
from tests.datasets_util import import_now, jpeg, make_zip
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _workspace(settings, tmp_path):
    settings.YMIR_WORKSPACE = tmp_path / "workspace"
    settings.YMIR_WORKSPACE.mkdir()


def test_import_form_uploads_and_the_dataset_page_shows_images_boxes_and_classes(trainer, tmp_path):
    project = ProjectFactory(owner=trainer)
    client = logged_in(trainer)
    archive = write_voc_zip_with_pred(tmp_path / "p.zip", 3, seed=4)
    with archive.open("rb") as handle:
        response = client.post(
            reverse("dataset_import", args=[project.pk]),
            {"name": "lego", "source": "upload", "file": handle, "format": "voc", "unknown_classes": "add"},
        )
    version = DatasetVersion.objects.get(group__name="lego")
    assert response.status_code == 302 and response["Location"] == reverse("dataset_detail", args=[version.pk])
    pending = client.get(reverse("dataset_detail", args=[version.pk])).content.decode()
    assert 'hx-trigger="every 1s"' in pending
    import_execute(version.task_id)
    version.refresh_from_db()
    page = client.get(reverse("dataset_detail", args=[version.pk])).content.decode()
    assert "every 1s" not in page
    assert page.count("<figure") == 3
    assert page.count('class="gt"') == version.gt_box_count and page.count('class="pred"') == version.pred_box_count
    assert 'class="bar-fill"' in page
    only_gt = client.get(reverse("dataset_detail", args=[version.pk]) + "?layer=gt").content.decode()
    assert 'class="pred"' not in only_gt and only_gt.count('class="gt"') == version.gt_box_count
    project_page = client.get(reverse("project_detail", args=[project.pk])).content.decode()
    assert "lego" in project_page and reverse("dataset_detail", args=[version.pk]) in project_page


def test_dataset_page_filters_by_class_and_pages_by_key(trainer, tmp_path, settings):
    project = ProjectFactory(owner=trainer)
    classes.class_create(user=trainer, name="red")
    from tests.datasets_util import voc

    files = {}
    for i in range(5):
        files[f"images/{i}.jpg"] = jpeg(colour=(i * 40, 10, 10))
        if i % 2 == 0:
            files[f"gt/{i}.xml"] = voc(f"{i}.jpg", [("red", 1, 1, 9, 9)])
    version = import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", files))
    red = LabelClass.objects.get(name="red")
    client = logged_in(trainer)
    url = reverse("dataset_detail", args=[version.pk])
    assert client.get(f"{url}?class={red.pk}").content.decode().count("<figure") == 3
    import datasets.views

    datasets.views.PAGE_SIZE = 2
    try:
        first = client.get(url).content.decode()
        assert first.count("<figure") == 2 and "?after=" in first
        after = first.split("?after=")[1].split("&")[0].split('"')[0]
        second = client.get(f"{url}?after={after}").content.decode()
        assert second.count("<figure") == 2
    finally:
        datasets.views.PAGE_SIZE = 48


def test_images_and_datasets_of_others_are_not_reachable(trainer, tmp_path):
    other = ProjectFactory()
    version = import_now(other.owner, other, upload=make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()}))
    sha1 = version.items.get().asset.sha1
    client = logged_in(trainer)
    assert client.get(reverse("dataset_detail", args=[version.pk])).status_code == 404
    assert client.get(reverse("asset_image", args=[sha1])).status_code == 404
    owner = logged_in(other.owner).get(reverse("asset_image", args=[sha1]))
    assert owner.status_code == 200 and b"".join(owner.streaming_content) == jpeg()
    assert client.get(reverse("dataset_import", args=[other.pk])).status_code == 404


def test_failed_import_can_be_retried_from_the_page(trainer, tmp_path, settings):
    project = ProjectFactory(owner=trainer)
    files = {
        "images/a.jpg": jpeg(),
        "gt/a.xml": b"<annotation><object><name>nope</name><bndbox><xmin>1</xmin>"
        b"<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
    }
    version = import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", files))
    assert version.state == "error"
    classes.class_create(user=trainer, name="nope")
    client = logged_in(trainer)
    assert "Unknown classes" in client.get(reverse("dataset_detail", args=[version.pk])).content.decode()
    client.post(reverse("dataset_retry", args=[version.pk]))
    version.refresh_from_db()
    assert version.state == "pending"
    import_execute(version.task_id)
    version.refresh_from_db()
    assert version.state == "ready" and version.gt_box_count == 1


def test_class_page_batch_add_rename_alias_merge(trainer):
    client = logged_in(trainer)
    client.post(reverse("class_list"), {"text": "brick, block\nplate"})
    brick = LabelClass.objects.get(name="brick")
    plate = LabelClass.objects.get(name="plate")
    client.post(reverse("class_alias", args=[plate.pk]), {"alias": "flat"})
    client.post(reverse("class_rename", args=[brick.pk]), {"name": "Brick"})
    client.post(reverse("class_merge", args=[plate.pk]), {"target": brick.pk})
    page = client.get(reverse("class_list")).content.decode()
    assert "Brick" in page and "flat" in page and "block" in page
    assert list(LabelClass.objects.values_list("name", flat=True)) == ["Brick"]
    response = client.post(reverse("class_alias", args=[brick.pk]), {"alias": "BRICK"}, follow=True)
    assert "Already in use" in response.content.decode()


def test_operations_from_the_dataset_page(trainer, tmp_path):
    from datasets.services import operation_run

    project = ProjectFactory(owner=trainer)
    files = {f"images/{i}.jpg": jpeg(colour=(i * 20, 100, 250 - i * 20)) for i in range(10)}
    version = import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", files))
    client = logged_in(trainer)
    url = reverse("dataset_operate", args=[version.pk])
    response = client.post(url, {"kind": "split", "name": "parts", "ratios": "0.7, 0.3", "seed": "5"})
    parts = list(DatasetVersion.objects.filter(group__name__startswith="parts-").order_by("id"))
    assert response["Location"] == reverse("dataset_detail", args=[parts[0].pk])
    operation_run(parts[0].task_id)
    assert [p.asset_count for p in DatasetVersion.objects.filter(pk__in=[p.pk for p in parts]).order_by("id")] == [7, 3]
    client.post(url, {"kind": "sample", "name": "few", "amount": "0.5"})
    few = DatasetVersion.objects.get(group__name="few")
    operation_run(few.task_id)
    few.refresh_from_db()
    assert few.asset_count == 5
    response = client.post(url, {"kind": "sample", "name": "bad", "amount": "lots"}, follow=True)
    assert "Numbers are needed" in response.content.decode()
    assert not DatasetVersion.objects.filter(group__name="bad").exists()
    page = client.get(reverse("dataset_detail", args=[version.pk])).content.decode()
    assert "Make a new version" in page and 'value="merge"' in page
