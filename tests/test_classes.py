"""The label registry: names and aliases unique across both, batch add, rename, merge."""

from __future__ import annotations

import pytest

from core.errors import Conflict, Invalid
from datasets import classes
from datasets.models import Box, LabelClass, LabelKeyword
from tests.datasets_util import import_now, jpeg, make_zip, voc
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def test_names_and_aliases_are_unique_across_both_regardless_of_case(trainer):
    brick = classes.class_create(user=trainer, name="Brick", aliases=["block"])
    with pytest.raises(Conflict):
        classes.class_create(user=trainer, name="BLOCK")
    with pytest.raises(Conflict):
        classes.class_create(user=trainer, name="plate", aliases=["brick"])
    with pytest.raises(Invalid):
        classes.class_create(user=trainer, name="tile", aliases=["Tile"])
    assert classes.resolve_keywords(["bLoCk", "brick", "nothing"]) == {"block": brick.pk, "brick": brick.pk}
    assert LabelClass.objects.count() == 1


def test_batch_add_one_per_line_with_aliases(trainer):
    classes.class_create(user=trainer, name="plate")
    created, skipped = classes.classes_create_batch(user=trainer, text="brick, block\n\nplate\n  tile  \n")
    assert [c.name for c in created] == ["brick", "tile"]
    assert len(skipped) == 1 and skipped[0].startswith("plate")
    assert classes.resolve_keywords(["block"]) == {"block": created[0].pk}


def test_rename_keeps_aliases_and_refuses_taken_names(trainer):
    brick = classes.class_create(user=trainer, name="brick", aliases=["block"])
    classes.class_create(user=trainer, name="plate")
    classes.class_rename(label=brick, name="Brick 2x2")
    assert set(LabelKeyword.objects.filter(label=brick).values_list("keyword", flat=True)) == {"Brick 2x2", "block"}
    with pytest.raises(Conflict):
        classes.class_rename(label=brick, name="PLATE")


def test_merge_moves_boxes_and_names(trainer, settings, tmp_path):
    settings.YMIR_WORKSPACE = tmp_path
    brick = classes.class_create(user=trainer, name="brick")
    block = classes.class_create(user=trainer, name="block", aliases=["cube"])
    project = ProjectFactory(owner=trainer)
    files = {"images/a.jpg": jpeg(), "gt/a.xml": voc("a.jpg", [("brick", 1, 1, 9, 9), ("cube", 2, 2, 8, 8)])}
    version = import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", files))
    assert version.class_counts["gt"] == {"brick": 1, "block": 1}
    classes.class_merge(source=block, target=brick)
    assert set(Box.objects.filter(version=version).values_list("label_id", flat=True)) == {brick.pk}
    assert classes.resolve_keywords(["cube", "block"]) == {"cube": brick.pk, "block": brick.pk}
    version.refresh_from_db()
    assert version.class_counts["gt"] == {"brick": 2}
    with pytest.raises(Invalid):
        classes.class_merge(source=brick, target=brick)
