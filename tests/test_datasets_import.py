"""Dataset import: formats, the content-addressed store, and every bad input the import must survive."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
from django.http import Http404
from PIL import Image

from core.errors import Conflict
from datasets import classes
from datasets.archive import SourceRefused
from datasets.demo import CLASSES, generate, write_voc_zip, write_voc_zip_with_pred
from datasets.models import Asset, Box, DatasetAsset, DatasetVersion, LabelClass
from datasets.store import asset_path
from models_app.models import Task
from tests.datasets_util import import_now, jpeg, make_zip, png_header_only, voc
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _workspace(settings, tmp_path):
    settings.YMIR_WORKSPACE = tmp_path / "workspace"
    settings.YMIR_WORKSPACE.mkdir()


@pytest.fixture
def project(trainer):
    return ProjectFactory(owner=trainer)


@pytest.fixture
def lego_classes(trainer):
    for name in CLASSES:
        classes.class_create(user=trainer, name=name)


def _boxes(version, gt=True):
    return Box.objects.filter(version=version, prediction_set__isnull=gt)


def test_voc_zip_import_stores_each_image_once_with_exact_boxes(trainer, project, lego_classes, tmp_path):
    archive = write_voc_zip(tmp_path / "lego.zip", count=12, seed=3, width=320, height=240)
    expected = [(name, boxes) for name, _data, boxes in generate(12, 3, 320, 240)]
    version = import_now(trainer, project, upload=archive)
    assert version.state == DatasetVersion.State.READY, version.report
    assert version.asset_count == 12 and version.report["new_assets"] == 12
    assert version.gt_box_count == sum(len(b) for _n, b in expected)
    total_by_class: dict[str, int] = {}
    for _n, boxes in expected:
        for b in boxes:
            total_by_class[b.label] = total_by_class.get(b.label, 0) + 1
    assert version.class_counts["gt"] == total_by_class
    name, boxes = expected[0]
    item = DatasetAsset.objects.get(version=version, name=f"images/{name}")
    stored = sorted((b.label.name, b.x1, b.y1, b.x2, b.y2) for b in _boxes(version).filter(asset=item.asset))
    assert stored == sorted((b.label, b.x1, b.y1, b.x2, b.y2) for b in boxes)
    assert asset_path(item.asset.sha1).read_bytes() == {n: d for n, d, _b in generate(1, 3, 320, 240)}[name]
    assert (item.asset.width, item.asset.height, item.asset.format) == (320, 240, "jpeg")
    assert Task.objects.get(pk=version.task_id).state == Task.State.DONE

    again = import_now(trainer, project, name="again", upload=write_voc_zip(tmp_path / "b.zip", 12, 3, 320, 240))
    assert again.report["new_assets"] == 0 and Asset.objects.count() == 12


def test_predictions_are_imported_as_a_prediction_set_with_scores(trainer, project, lego_classes, tmp_path):
    version = import_now(trainer, project, upload=write_voc_zip_with_pred(tmp_path / "p.zip", 4, seed=5))
    assert version.pred_box_count == version.gt_box_count > 0
    scores = list(_boxes(version, gt=False).values_list("score", flat=True))
    assert all(0 < s <= 1 for s in scores) and len(set(scores)) > 1
    assert _boxes(version).filter(score__isnull=False).count() == 0


def test_box_tags_and_aliases_are_kept(trainer, project, tmp_path):
    red = classes.class_create(user=trainer, name="red brick", aliases=["RB", "brick-red"])
    archive = make_zip(
        tmp_path / "a.zip",
        {"images/a.JPG": jpeg(), "gt/a.xml": voc("a.JPG", [("rb", 1, 2, 30, 40), ("Brick-Red", 5, 5, 10, 10)])},
    )
    version = import_now(trainer, project, upload=archive)
    boxes = list(_boxes(version))
    assert {b.label_id for b in boxes} == {red.pk}
    assert boxes[0].tags == {"difficult": "1", "pose": "Left"}
    assert version.class_counts["gt"] == {"red brick": 2}


def test_coco_import(trainer, project, lego_classes, tmp_path):
    doc = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "tile_1x2"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 99, "category_id": 7, "bbox": [2, 3, 10, 20]},
        ],
    }
    archive = make_zip(
        tmp_path / "c.zip", {"images/x.jpg": jpeg(), "annotations/instances.json": json.dumps(doc).encode()}
    )
    version = import_now(trainer, project, upload=archive, fmt="coco")
    assert version.state == "ready", version.report
    box = _boxes(version).get()
    assert (box.x1, box.y1, box.x2, box.y2) == (2, 3, 12, 23)
    assert version.report["boxes"]["orphan_annotations"] == 1


def test_yolo_import(trainer, project, lego_classes, tmp_path):
    archive = make_zip(
        tmp_path / "y.zip",
        {
            "images/x.png": _png(100, 50),
            "labels/x.txt": b"1 0.5 0.5 0.2 0.4\n",
            "classes.txt": b"brick_2x2\nbrick_2x4\n",
        },
    )
    version = import_now(trainer, project, upload=archive, fmt="yolo")
    assert version.state == "ready", version.report
    box = _boxes(version).get()
    assert box.label.name == "brick_2x4"
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((40, 15, 60, 35))


def _png(width, height):
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


def _refused(version, text):
    assert version.state == DatasetVersion.State.ERROR
    assert text in version.report["error"]["message"], version.report
    assert not DatasetAsset.objects.filter(version=version).exists()
    assert not Box.objects.filter(version=version).exists()
    task = Task.objects.get(pk=version.task_id)
    assert task.state == Task.State.ERROR and task.error_message


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"images/../../evil.jpg": b"x"}, "Unsafe entry name"),
        ({"/etc/evil.jpg": b"x"}, "Unsafe entry name"),
        ({"images\\..\\evil.jpg": b"x"}, "Unsafe entry name"),
        ({"readme.txt": b"no images here"}, "No images found"),
    ],
)
def test_unsafe_or_empty_archives_are_refused(trainer, project, tmp_path, files, message):
    version = import_now(trainer, project, upload=make_zip(tmp_path / "bad.zip", files))
    _refused(version, message)
    assert not (tmp_path / "evil.jpg").exists()


def test_symlink_entries_are_refused(trainer, project, tmp_path):
    archive = make_zip(tmp_path / "l.zip", {"images/a.jpg": jpeg()}, symlinks={"images/b.jpg": "/etc/passwd"})
    _refused(import_now(trainer, project, upload=archive), "symbolic link")


def test_not_a_zip_and_a_truncated_zip_are_refused(trainer, project, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip at all")
    _refused(import_now(trainer, project, name="junk", upload=junk), "not a readable zip")
    whole = make_zip(tmp_path / "whole.zip", {"images/a.jpg": jpeg(), "images/b.jpg": jpeg(colour=(1, 2, 3))})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _refused(import_now(trainer, project, name="cut", upload=cut), "not a readable zip")


def test_zip_bombs_are_refused_by_ratio_and_size(trainer, project, tmp_path, settings):
    bomb = make_zip(tmp_path / "bomb.zip", {"images/a.jpg": b"\x00" * (50 << 20)})
    _refused(import_now(trainer, project, name="bomb", upload=bomb), "expands suspiciously")
    settings.YMIR_IMPORT_MAX_TOTAL_BYTES = 1000
    big = make_zip(tmp_path / "big.zip", {"images/a.jpg": os.urandom(2000)})
    _refused(import_now(trainer, project, name="big", upload=big), "limit is 1000")
    settings.YMIR_IMPORT_MAX_ENTRIES = 2
    many = make_zip(tmp_path / "many.zip", {f"images/{i}.jpg": b"x" for i in range(3)})
    _refused(import_now(trainer, project, name="many", upload=many), "entries; the limit is 2")


def test_bad_images_are_skipped_and_reported(trainer, project, tmp_path):
    good = jpeg()
    files = {
        "images/good.jpg": good,
        "images/corrupt.jpg": b"\x00\x01 definitely not an image",
        "images/truncated.jpg": good[: len(good) // 2],
        "images/bomb.png": png_header_only(30000, 30000),
        "images/notes.txt": b"hello",
        "images/copy.jpg": good,
    }
    version = import_now(trainer, project, upload=make_zip(tmp_path / "imgs.zip", files))
    assert version.state == "ready" and version.asset_count == 1
    reasons = {s["file"]: s["reason"] for s in version.report["skipped"]}
    assert "not a readable image" in reasons["images/corrupt.jpg"]
    assert "truncated" in reasons["images/truncated.jpg"]
    assert "decompression bomb" in reasons["images/bomb.png"] or "too large" in reasons["images/bomb.png"]
    assert "not an image type" in reasons["images/notes.txt"]
    assert "same image as" in reasons["images/good.jpg"] or "same image as" in reasons["images/copy.jpg"]


def test_hostile_and_broken_xml_is_reported_not_parsed(trainer, project, lego_classes, tmp_path):
    billion = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    files = {
        "images/a.jpg": jpeg(),
        "images/b.jpg": jpeg(colour=(0, 0, 255)),
        "images/c.jpg": jpeg(colour=(0, 255, 0)),
        "gt/a.xml": voc("a.jpg", [("tile_1x2", 1, 1, 5, 5)], extra=billion),
        "gt/b.xml": b"<annotation><object><name>x</name>",
        "gt/ghost.xml": voc("ghost.jpg", [("tile_1x2", 1, 1, 5, 5)]),
        "gt/c.xml": voc("c.jpg", [("tile_1x2", 1, 1, 5, 5)]),
    }
    version = import_now(trainer, project, upload=make_zip(tmp_path / "x.zip", files))
    reasons = {s["file"]: s["reason"] for s in version.report["skipped"]}
    assert "refused XML" in reasons["gt/a.xml"]
    assert "invalid XML" in reasons["gt/b.xml"]
    assert "not in the import" in reasons["gt/ghost.xml"]
    assert version.asset_count == 3 and version.gt_box_count == 1


def test_bad_boxes_are_clipped_or_rejected_and_counted(trainer, project, lego_classes, tmp_path):
    objects = [
        ("tile_1x2", 10, 10, 20, 20),  # fine
        ("tile_1x2", -5, 40, 30, 60),  # partly outside: clipped
        ("tile_1x2", 100, 100, 200, 200),  # entirely outside
        ("tile_1x2", 10, 10, 10, 30),  # empty
        ("tile_1x2", 30, 10, 20, 20),  # inverted
        ("tile_1x2", "nan", 1, 5, 5),  # not a number
    ]
    files = {"images/a.jpg": jpeg(64, 48), "gt/a.xml": voc("a.jpg", objects)}
    version = import_now(trainer, project, upload=make_zip(tmp_path / "b.zip", files))
    counts = version.report["boxes"]
    assert counts["gt"] == 2 and counts["gt_clipped"] == 1
    assert counts["gt_rejected_outside_the_image"] == 1 and counts["gt_rejected_empty"] == 1
    assert counts["gt_rejected_inverted_(x2_<_x1_or_y2_<_y1)"] == 1 and counts["gt_rejected_not_a_number"] == 1
    clipped = _boxes(version).order_by("y1").last()
    assert (clipped.x1, clipped.y1, clipped.x2, clipped.y2) == (0, 40, 30, 48)


def test_unknown_classes_stop_ignore_add(trainer, project, lego_classes, tmp_path):
    files = {
        "images/a.jpg": jpeg(),
        "gt/a.xml": voc("a.jpg", [("tile_1x2", 1, 1, 9, 9), ("Mystery Piece", 2, 2, 8, 8)]),
    }
    stopped = import_now(trainer, project, name="stop", upload=make_zip(tmp_path / "1.zip", files))
    _refused(stopped, "Unknown classes: Mystery Piece")
    assert stopped.report["error"]["details"]["unknown_classes"] == ["Mystery Piece"]
    ignored = import_now(
        trainer, project, name="ignore", upload=make_zip(tmp_path / "2.zip", files), unknown_classes="ignore"
    )
    assert ignored.gt_box_count == 1 and ignored.report["unknown_classes"] == ["Mystery Piece"]
    assert ignored.report["boxes"]["gt_unknown_class"] == 1
    added = import_now(trainer, project, name="add", upload=make_zip(tmp_path / "3.zip", files), unknown_classes="add")
    assert added.gt_box_count == 2 and added.report["added_classes"] == ["Mystery Piece"]
    assert LabelClass.objects.filter(name="Mystery Piece").exists()


def test_duplicate_entry_names_are_reported(trainer, project, tmp_path):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("images/a.jpg", jpeg())
        archive.writestr("images/a.jpg", jpeg(colour=(9, 9, 9)))
    version = import_now(trainer, project, upload=path)
    assert version.asset_count == 1
    assert any("appears twice" in s["reason"] for s in version.report["skipped"])


def test_server_path_import_stays_inside_the_sharing_root(trainer, project, lego_classes, tmp_path, settings):
    root = tmp_path / "share"
    (root / "lego" / "images").mkdir(parents=True)
    (root / "lego" / "images" / "a.jpg").write_bytes(jpeg())
    outside = tmp_path / "secret"
    (outside / "images").mkdir(parents=True)
    (outside / "images" / "s.jpg").write_bytes(jpeg())
    (root / "escape").symlink_to(outside)
    settings.YMIR_SHARING_ROOT = str(root)
    version = import_now(trainer, project, path="lego")
    assert version.state == "ready" and version.asset_count == 1
    for bad in ("../secret", "lego/../../secret", "escape"):
        with pytest.raises(SourceRefused, match="outside the sharing root"):
            import_now(trainer, project, name=f"bad {bad}", path=bad)
    (root / "lego" / "images" / "link.jpg").symlink_to(outside / "images" / "s.jpg")
    _refused(import_now(trainer, project, name="linked", path="lego"), "symbolic link")


def test_copy_of_a_dataset_shares_assets_and_copies_boxes(trainer, project, lego_classes, tmp_path):
    source = import_now(trainer, project, upload=write_voc_zip_with_pred(tmp_path / "p.zip", 3, seed=8))
    copy = import_now(trainer, project, name="copy", copy_of=source.pk)
    assert copy.state == "ready"
    assert (copy.asset_count, copy.gt_box_count, copy.pred_box_count) == (
        source.asset_count,
        source.gt_box_count,
        source.pred_box_count,
    )
    assert list(copy.parents.values_list("id", flat=True)) == [source.pk]
    assert Asset.objects.count() == 3
    assert copy.class_counts == source.class_counts


def test_another_users_dataset_cannot_be_copied(trainer, project, tmp_path):
    other_project = ProjectFactory()
    theirs = import_now(
        other_project.owner, other_project, upload=make_zip(tmp_path / "t.zip", {"images/a.jpg": jpeg()})
    )
    with pytest.raises(Http404):
        import_now(trainer, project, name="stolen", copy_of=theirs.pk)
    assert not DatasetVersion.objects.filter(group__name="stolen").exists()


def test_dataset_names_are_unique_per_project(trainer, project, tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()})
    import_now(trainer, project, name="Bricks", upload=archive)
    with pytest.raises(Conflict, match="already has a dataset"):
        import_now(trainer, project, name="bricks", upload=archive)


def test_parallel_image_pass_gives_the_same_version(trainer, project, lego_classes, tmp_path, settings, monkeypatch):
    import datasets.ingest

    archive = write_voc_zip_with_pred(tmp_path / "p.zip", 20, seed=21)
    serial = import_now(trainer, project, name="serial", upload=archive)
    monkeypatch.setattr(datasets.ingest, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(datasets.ingest, "CHUNK", 3)
    settings.YMIR_IMPORT_WORKERS = 2
    parallel = import_now(
        trainer, project, name="parallel", upload=write_voc_zip_with_pred(tmp_path / "q.zip", 20, seed=21)
    )

    def content(version):
        return sorted(
            (b.asset.sha1, b.label_id, b.x1, b.y1, b.x2, b.y2, b.score or -1.0)
            for b in Box.objects.filter(version=version).select_related("asset")
        )

    assert parallel.state == "ready" and parallel.asset_count == 20
    assert content(parallel) == content(serial)
    assert [i.name for i in parallel.items.order_by("id")] == [i.name for i in serial.items.order_by("id")]


def test_the_field_scene_mixes_in_the_conditions_a_lab_training_set_lacks():
    from collections import Counter

    from PIL import ImageStat

    from datasets.demo import FIELD_CONDITIONS, field_condition, make_image

    conditions = [field_condition(7, i) for i in range(600)]
    counts = Counter(conditions)
    for condition, share in FIELD_CONDITIONS.items():
        assert abs(counts[condition] / 600 - share) < 0.06, (condition, counts)
    picked = {c: [i for i, x in enumerate(conditions) if x == c][:6] for c in FIELD_CONDITIONS}
    made = {c: [make_image(7, i, 320, 240, "field") for i in picked[c]] for c in FIELD_CONDITIONS}
    # a field image shot in lab conditions is the lab scene's image of that index
    assert [m[0] for m in made["lab"]] == [make_image(7, i, 320, 240)[0] for i in picked["lab"]]
    assert all(boxes == [] for _data, boxes in made["empty"])

    def mean_boxes(c: str) -> float:
        return sum(len(boxes) for _d, boxes in made[c]) / len(made[c])

    def mean_area(c: str) -> float:
        areas = [(b.x2 - b.x1) * (b.y2 - b.y1) for _d, boxes in made[c] for b in boxes]
        return sum(areas) / len(areas)

    def brightness(c: str) -> float:
        return sum(ImageStat.Stat(Image.open(io.BytesIO(d)).convert("L")).mean[0] for d, _b in made[c]) / len(made[c])

    assert mean_boxes("crowded") > mean_boxes("lab") + 4
    assert mean_area("small") < 0.4 * mean_area("lab")
    assert brightness("dim") < 0.6 * brightness("lab")
    with pytest.raises(ValueError):
        make_image(7, 0, scene="night")


def test_long_tailed_demo_classes_follow_their_weights_and_leave_the_even_draw_alone():
    from collections import Counter

    from datasets.demo import CLASSES, TAIL_WEIGHTS, make_image

    even: Counter[str] = Counter()
    tailed: Counter[str] = Counter()
    for i in range(120):
        even.update(b.label for b in make_image(5, i, 320, 240)[1])
        tailed.update(b.label for b in make_image(5, i, 320, 240, "field", tail=True)[1])
    assert min(even[c] for c in CLASSES) > 0.5 * max(even.values())  # the default draw stays even
    common, rare = max(TAIL_WEIGHTS, key=TAIL_WEIGHTS.__getitem__), min(TAIL_WEIGHTS, key=TAIL_WEIGHTS.__getitem__)
    assert 0 < tailed[rare] < 0.2 * tailed[common], tailed
    ranked = sorted(CLASSES, key=lambda c: -tailed[c])
    assert set(ranked[:3]) == {c for c, w in TAIL_WEIGHTS.items() if w == 1.0}
    # the same index draws other parts when tailed
    assert make_image(5, 3, 320, 240, tail=True)[0] != make_image(5, 3, 320, 240)[0]


@pytest.mark.django_db
def test_a_second_delivery_while_the_import_runs_is_dropped_and_one_after_its_heartbeat_went_stale_resumes(
    trainer, project, lego_classes, settings
):
    """The broker redelivers a message whose run outlived its visibility timeout: that run still beats, so the
    second delivery must not import beside it (it would clear and rewrite the same rows). A run whose heartbeat
    went stale (its worker died) is resumed by the next delivery."""
    from datetime import timedelta

    from django.utils import timezone

    from datasets.services import demo_import_start, import_execute

    version = demo_import_start(user=trainer, project=project, name="twice", count=3, seed=1, start=0)
    assert version.task_id is not None
    Task.objects.filter(pk=version.task_id).update(state=Task.State.RUNNING, heartbeat_at=timezone.now())
    import_execute(version.task_id)
    version.refresh_from_db()
    assert version.state == "pending" and not version.items.exists()
    assert Task.objects.get(pk=version.task_id).state == Task.State.RUNNING
    stale = timezone.now() - timedelta(seconds=settings.YMIR_TASK_STALE_SECONDS + 5)
    Task.objects.filter(pk=version.task_id).update(heartbeat_at=stale)
    import_execute(version.task_id)
    version.refresh_from_db()
    assert version.state == "ready" and version.asset_count == 3
    assert Task.objects.get(pk=version.task_id).state == Task.State.DONE
