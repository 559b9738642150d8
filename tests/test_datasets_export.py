"""Export: import -> export -> import gives the same version, in VOC and COCO."""

from __future__ import annotations

import pytest
from django.urls import reverse

from datasets.demo import write_voc_zip_with_pred
from datasets.models import Box, DatasetAsset
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def _content(version):
    items = sorted(DatasetAsset.objects.filter(version=version).values_list("asset__sha1", "tags"), key=str)
    boxes = sorted(
        (
            b.asset.sha1,
            b.label.name,
            b.x1,
            b.y1,
            b.x2,
            b.y2,
            -1.0 if b.score is None else b.score,
            sorted(b.tags.items()),
            b.prediction_set_id is None,
        )
        for b in Box.objects.filter(version=version).select_related("asset", "label")
    )
    return items, boxes


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_import_export_import_gives_the_same_version(trainer, workspace, tmp_path, fmt):
    project = ProjectFactory(owner=trainer)
    archive = write_voc_zip_with_pred(tmp_path / "p.zip", 5, seed=12)
    extra = make_zip(
        tmp_path / "x.zip",
        {"images/sub/odd.jpg": jpeg(), "gt/sub/odd.xml": voc("odd.jpg", [("odd one", 1.5, 2.25, 30, 40)])},
    )
    first = import_now(trainer, project, name="first", upload=archive, unknown_classes="add")
    odd = import_now(trainer, project, name="odd", upload=extra, unknown_classes="add")
    response = api_as(trainer).get(f"/api/v1/datasets/{first.pk}/export?format={fmt}")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    exported = tmp_path / f"export.{fmt}.zip"
    exported.write_bytes(b"".join(response.streaming_content))
    again = import_now(trainer, project, name="again", upload=exported, fmt=fmt)
    assert again.state == "ready", again.report
    assert _content(again) == _content(first)
    assert again.class_counts == first.class_counts
    page = logged_in(trainer).get(reverse("dataset_export", args=[odd.pk]) + f"?format={fmt}")
    (tmp_path / "odd.zip").write_bytes(b"".join(page.streaming_content))
    odd_again = import_now(trainer, project, name="odd again", upload=tmp_path / "odd.zip", fmt=fmt)
    assert _content(odd_again) == _content(odd)
    assert not list((workspace / "uploads").glob("export-*"))


def test_export_of_another_users_dataset_is_a_404(trainer, workspace, tmp_path):
    other = ProjectFactory()
    version = import_now(other.owner, other, upload=make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()}))
    assert api_as(trainer).get(f"/api/v1/datasets/{version.pk}/export").status_code == 404
    assert api_as(other.owner).get(f"/api/v1/datasets/{version.pk}/export?format=pdf").status_code == 422
