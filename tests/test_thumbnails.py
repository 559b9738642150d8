"""The follow-up pass: thumbnails and quality scores, after the version is ready."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image, ImageFilter

from datasets.analysis import analyse
from datasets.demo import write_voc_zip
from datasets.models import Asset
from datasets.services import thumbnails_make
from datasets.thumbs import quality_score, thumbnail_path
from tests.conftest import logged_in
from tests.datasets_util import import_now, make_zip
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def _png_with_broken_pixels() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 99, 199)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = b"\xff" * 20  # the header and IEND stay valid: only a full decode notices
    return bytes(data)


def test_thumbnails_and_scores_are_made_after_import(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    archive = write_voc_zip(tmp_path / "a.zip", 5, seed=40)
    version = import_now(trainer, project, upload=archive, unknown_classes="add")
    broken = import_now(
        trainer,
        project,
        name="broken",
        upload=make_zip(tmp_path / "b.zip", {"images/x.png": _png_with_broken_pixels()}),
    )
    assert version.state == "ready" and not Asset.objects.filter(has_thumbnail=True).exists()
    assert thumbnails_make(version.pk) == 5
    assert thumbnails_make(version.pk) == 0  # done once
    for asset in Asset.objects.filter(id__in=version.items.values("asset_id")):
        assert asset.has_thumbnail and asset.quality is not None and 0 <= asset.quality <= 1
        with Image.open(thumbnail_path(asset.sha1, workspace)) as thumb:
            assert max(thumb.size) <= 256
    assert thumbnails_make(broken.pk) == 0
    bad = Asset.objects.get(id__in=broken.items.values("asset_id"))
    assert bad.decode_failed and not bad.has_thumbnail
    assert analyse(version)["quality"]["scored_images"] == 5
    client = logged_in(trainer)
    page = client.get(reverse("dataset_detail", args=[version.pk])).content.decode()
    assert page.count("?thumb=1") == 5
    sha1 = Asset.objects.filter(has_thumbnail=True).values_list("sha1", flat=True)[0]
    response = client.get(reverse("asset_image", args=[sha1]) + "?thumb=1")
    assert response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content) == thumbnail_path(sha1, workspace).read_bytes()


def test_quality_score_prefers_sharp_well_exposed_images():
    rng = np.random.default_rng(0)
    sharp = Image.fromarray((rng.random((128, 128)) * 255).astype(np.uint8))
    blurred = sharp.filter(ImageFilter.GaussianBlur(4))
    dark = Image.fromarray((np.asarray(sharp) * 0.1).astype(np.uint8))
    flat = Image.new("L", (128, 128), 128)
    scores = {
        name: quality_score(np.asarray(image))
        for name, image in {"sharp": sharp, "blurred": blurred, "dark": dark, "flat": flat}.items()
    }
    assert scores["sharp"] > scores["blurred"] > scores["flat"]
    assert scores["sharp"] > scores["dark"]
    assert all(0 <= s <= 1 for s in scores.values())
