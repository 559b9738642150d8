"""Deleting and publishing datasets, editing and deleting projects, and the management commands."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from datasets.demo import write_voc_zip
from datasets.models import Box, DatasetAsset, DatasetGroup, DatasetVersion
from models_app.models import Task
from projects.models import Project
from tests.conftest import logged_in
from tests.datasets_util import import_now, jpeg, make_zip
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def test_delete_a_dataset_and_the_in_use_refusals(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    version = import_now(
        trainer, project, upload=write_voc_zip(tmp_path / "a.zip", 3, 1, 160, 120), unknown_classes="add"
    )
    client = logged_in(trainer)
    from datasets.operations import operation_start

    (child,) = operation_start(user=trainer, kind="sample", name="child", params={"inputs": [version.pk], "count": 1})
    client.post(reverse("dataset_delete", args=[version.pk]))
    assert DatasetVersion.objects.filter(pk=version.pk).exists()  # a task is making a dataset from it
    client.post(reverse("dataset_delete", args=[child.pk]))
    assert DatasetVersion.objects.filter(pk=child.pk).exists()  # itself still being made
    Task.objects.filter(pk=child.task_id).update(state="done")
    DatasetVersion.objects.filter(pk=child.pk).update(state="ready")
    intruder = logged_in(ProjectFactory().owner)
    assert intruder.post(reverse("dataset_delete", args=[version.pk])).status_code == 404
    response = client.post(reverse("dataset_delete", args=[version.pk]))
    assert response["Location"] == reverse("project_detail", args=[project.pk])
    assert not DatasetVersion.objects.filter(pk=version.pk).exists()
    assert not DatasetGroup.objects.filter(name="ds").exists()
    assert (
        not Box.objects.filter(version_id=version.pk).exists()
        and not DatasetAsset.objects.filter(version_id=version.pk).exists()
    )


def test_public_datasets_are_visible_and_copyable_by_others(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer)
    version = import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()}))
    other_project = ProjectFactory()
    other = logged_in(other_project.owner)
    assert other.get(reverse("dataset_detail", args=[version.pk])).status_code == 404
    assert other.post(reverse("dataset_public", args=[version.pk]), {"public": "1"}).status_code == 404
    logged_in(trainer).post(reverse("dataset_public", args=[version.pk]), {"public": "1"})
    assert other.get(reverse("dataset_detail", args=[version.pk])).status_code == 200
    other.post(reverse("dataset_public", args=[version.pk]), {"public": "0"})  # not theirs: refused
    version.refresh_from_db()
    assert version.is_public
    copy = import_now(other_project.owner, other_project, name="copy", copy_of=version.pk)
    assert copy.state == "ready" and copy.asset_count == 1


def test_edit_and_delete_a_project_with_confirmation(trainer, workspace, tmp_path):
    project = ProjectFactory(owner=trainer, name="Bricks")
    import_now(trainer, project, upload=make_zip(tmp_path / "a.zip", {"images/a.jpg": jpeg()}))
    client = logged_in(trainer)
    client.post(reverse("project_edit", args=[project.pk]), {"name": "Lego bricks", "description": "x"})
    project.refresh_from_db()
    assert project.name == "Lego bricks"
    client.post(reverse("project_delete", args=[project.pk]), {"confirm_name": "wrong"})
    assert Project.objects.filter(pk=project.pk).exists()
    pending = Task.objects.create(user=trainer, project=project, kind="training", state="running")
    client.post(reverse("project_delete", args=[project.pk]), {"confirm_name": "Lego bricks"})
    assert Project.objects.filter(pk=project.pk).exists()  # a task still runs
    pending.delete()
    response = client.post(reverse("project_delete", args=[project.pk]), {"confirm_name": "Lego bricks"})
    assert response["Location"] == reverse("project_list")
    assert not Project.objects.filter(pk=project.pk).exists() and not DatasetVersion.objects.exists()
    assert logged_in(ProjectFactory().owner).get(reverse("project_edit", args=[project.pk])).status_code == 404


def test_management_commands_import_and_export(trainer, workspace, tmp_path, capsys):
    project = ProjectFactory(owner=trainer)
    archive = write_voc_zip(tmp_path / "a.zip", 4, 2, 160, 120)
    call_command(
        "import_dataset", user=trainer.username, project=project.pk, name="cli", zip=archive, unknown_classes="add"
    )
    version = DatasetVersion.objects.get(group__name="cli")
    assert "4 images" in capsys.readouterr().out and version.asset_count == 4
    out = tmp_path / "out.zip"
    call_command("export_dataset", version.pk, format="coco", out=out)
    call_command("import_dataset", user=trainer.username, project=project.pk, name="again", zip=out, format="coco")
    assert DatasetVersion.objects.get(group__name="again").gt_box_count == version.gt_box_count
    with pytest.raises(CommandError):
        call_command(
            "import_dataset", user=trainer.username, project=project.pk, name="bad", zip=tmp_path / "missing.zip"
        )
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"junk")
    with pytest.raises(CommandError, match="not a readable zip"):
        call_command("import_dataset", user=trainer.username, project=project.pk, name="junk", zip=junk)
