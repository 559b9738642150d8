"""Dataset analysis: figures checked against a direct computation, on the page, in the API, side by side."""

from __future__ import annotations

import pytest
from django.urls import reverse

from datasets.analysis import AREA_EDGES, ASPECT_EDGES, SIZE_EDGES, analyse
from datasets.demo import CLASSES, generate, write_voc_zip_with_pred
from datasets.models import Asset
from tests.conftest import api_as, logged_in
from tests.datasets_util import import_now, jpeg, make_zip
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def _bin(value, edges):
    return next((i for i, edge in enumerate(edges) if value < edge), len(edges))


def test_figures_match_a_direct_computation(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    version = import_now(
        trainer, project, upload=write_voc_zip_with_pred(tmp_path / "p.zip", 8, seed=30), unknown_classes="add"
    )
    files = {"images/empty.jpg": jpeg(200, 50)}  # unlabelled, wide
    version2 = import_now(trainer, project, name="other", upload=make_zip(tmp_path / "e.zip", files))
    result = analyse(version)
    truth = list(generate(8, 30, 320, 240))
    boxes = [b for _n, _d, bs in truth for b in bs]
    assert result["overall"]["images"] == 8
    assert result["overall"]["gt_boxes"] == len(boxes) == result["overall"]["pred_boxes"]
    assert result["overall"]["storage_bytes"] == sum(len(d) for _n, d, _b in truth)
    assert result["overall"]["boxes_per_image"] == pytest.approx(len(boxes) / 8)
    assert result["overall"]["labelled_images"] == sum(1 for *_x, bs in truth if bs)
    expected_classes: dict[str, int] = {}
    for b in boxes:
        expected_classes[b.label] = expected_classes.get(b.label, 0) + 1
    assert result["boxes"]["gt"]["classes"] == expected_classes
    assert set(expected_classes) <= set(CLASSES)
    expected_area = [0] * (len(AREA_EDGES) + 1)
    for b in boxes:
        expected_area[_bin((b.x2 - b.x1) * (b.y2 - b.y1) / (320 * 240), AREA_EDGES)] += 1
    assert result["boxes"]["gt"]["relative_area"]["counts"] == expected_area
    sizes = [0] * (len(SIZE_EDGES) + 1)
    for size in Asset.objects.filter(sha1__in=version.items.values("asset__sha1")).values_list("size_bytes", flat=True):
        sizes[_bin(size, SIZE_EDGES)] += 1
    assert result["images"]["file_size"]["counts"] == sizes
    other = analyse(version2)
    assert other["overall"]["labelled_share"] == 0 and other["overall"]["gt_boxes"] == 0
    assert other["images"]["aspect_ratio"]["counts"][_bin(4.0, ASPECT_EDGES)] == 1


def test_analysis_api_page_and_comparison(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    a = import_now(
        trainer,
        project,
        name="a",
        upload=write_voc_zip_with_pred(tmp_path / "a.zip", 4, seed=31),
        unknown_classes="add",
    )
    b = import_now(
        trainer,
        project,
        name="b",
        upload=write_voc_zip_with_pred(tmp_path / "b.zip", 6, seed=32),
        unknown_classes="add",
    )
    data = api_as(trainer).get(f"/api/v1/datasets/{a.pk}/analysis").json()
    assert data["overall"]["images"] == 4 and "file_size" in data["images"]
    page = logged_in(trainer).get(reverse("dataset_analysis") + f"?ids={a.pk}&ids={b.pk}").content.decode()
    assert page.count('<canvas id="chart-') >= 7
    assert "a v1" in page and "b v1" in page and "chart.umd.min.js" in page
    other = ProjectFactory()
    hidden = import_now(other.owner, other, name="h", upload=make_zip(tmp_path / "h.zip", {"images/h.jpg": jpeg()}))
    assert api_as(trainer).get(f"/api/v1/datasets/{hidden.pk}/analysis").status_code == 404
    assert logged_in(trainer).get(reverse("dataset_analysis") + f"?ids={hidden.pk}").status_code == 404
