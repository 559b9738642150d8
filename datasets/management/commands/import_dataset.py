"""Import a dataset from the command line, running the import here (no worker needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ServiceError
from core.models import User
from datasets.services import dataset_import_start, import_execute
from projects.models import Project


class Command(BaseCommand):
    help = "Import a zip, a URL, a folder under the sharing root, or a copy of a dataset into a project."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="the importing user's name")
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--name", required=True)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--zip", type=Path)
        source.add_argument("--url")
        source.add_argument("--path", help="a folder under YMIR_SHARING_ROOT")
        source.add_argument("--copy-of", type=int)
        parser.add_argument("--format", default="voc", choices=["voc", "coco", "yolo"])
        parser.add_argument("--unknown-classes", default="stop", choices=["stop", "ignore", "add"])

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["user"], is_active=True).first()
        project = Project.objects.filter(pk=options["project"], owner=user).first() if user else None
        if user is None or project is None:
            raise CommandError("No such active user, or the project is not theirs.")
        upload = None
        if options["zip"]:
            if not options["zip"].is_file():
                raise CommandError(f"No such file: {options['zip']}")
            from datasets.services import upload_save

            with options["zip"].open("rb") as handle:
                upload = upload_save(handle)
        try:
            version = dataset_import_start(
                user=user,
                project=project,
                name=options["name"],
                fmt=options["format"],
                unknown_classes=options["unknown_classes"],
                upload=upload,
                url=options["url"],
                path=options["path"],
                copy_of=options["copy_of"],
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        assert version.task_id is not None
        import_execute(version.task_id)
        version.refresh_from_db()
        if version.state != "ready":
            raise CommandError(f"Import failed: {version.report.get('error', {}).get('message')}")
        self.stdout.write(
            f"dataset {version.pk}: {version.asset_count} images, {version.gt_box_count} ground-truth boxes, "
            f"{version.pred_box_count} predicted boxes, {version.report.get('skipped_count', 0)} files skipped"
        )
