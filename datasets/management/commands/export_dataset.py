"""Export a dataset version as a VOC or COCO zip."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ServiceError
from datasets.models import DatasetVersion
from datasets.services import version_export


class Command(BaseCommand):
    help = "Export a dataset version (by id) to a zip file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", type=int)
        parser.add_argument("--format", default="voc", choices=["voc", "coco"])
        parser.add_argument("--out", type=Path, required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        version = DatasetVersion.objects.filter(pk=options["dataset"]).select_related("group").first()
        if version is None:
            raise CommandError("No such dataset.")
        try:
            handle = version_export(version=version, fmt=options["format"])
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        with handle, options["out"].open("wb") as out:
            shutil.copyfileobj(handle, out)
        self.stdout.write(f"wrote {options['out']}")
