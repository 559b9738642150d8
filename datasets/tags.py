"""Editing asset tags (per image of a version) and box tags (per box): key/value metadata about the data.

Tags describe the data rather than being it, so they stay editable on a ready version (its images and boxes
do not change). Only the project's owner edits; keys are short identifiers, values short strings.
"""

from __future__ import annotations

import re
from typing import TypeVar

from django.db import transaction
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid
from core.models import User
from datasets.models import Box, DatasetAsset, DatasetVersion

Tagged = TypeVar("Tagged", DatasetAsset, Box)
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,49}$")
MAX_VALUE = 200
MAX_TAGS = 50


def _check(user: User, version: DatasetVersion) -> None:
    if version.group.project.owner_id != user.pk:
        raise Forbidden(_("Only the project's owner can edit its tags."))
    if version.state != DatasetVersion.State.READY:
        raise Conflict(_("Tags can be edited once the dataset is ready."), code="not_ready")


def clean_changes(set_tags: dict[str, object], remove: list[str]) -> tuple[dict[str, str], list[str]]:
    cleaned: dict[str, str] = {}
    for key, value in set_tags.items():
        if not isinstance(key, str) or not KEY.match(key):
            raise Invalid(
                _("Tag keys start with a letter or _, then letters, digits, _ . - (at most 50): %(key)s")
                % {"key": str(key)[:60]},
                code="invalid_tag",
            )
        text = str(value).strip() if isinstance(value, str | int | float) and not isinstance(value, bool) else None
        if text is None or len(text) > MAX_VALUE:
            raise Invalid(_("Tag values are text of at most %(n)d characters.") % {"n": MAX_VALUE}, code="invalid_tag")
        cleaned[key] = text
    return cleaned, [k for k in remove if isinstance(k, str)]


def _apply(tags: dict, changes: dict[str, str], remove: list[str]) -> dict:
    updated = {k: v for k, v in (tags or {}).items() if k not in remove}
    updated.update(changes)
    if len(updated) > MAX_TAGS:
        raise Invalid(_("At most %(n)d tags.") % {"n": MAX_TAGS}, code="invalid_tag")
    return updated


def asset_tags_edit(
    *, user: User, version: DatasetVersion, asset_id: int, set_tags: dict[str, object], remove: list[str]
) -> DatasetAsset:
    items = DatasetAsset.objects.filter(version=version, asset_id=asset_id)
    return _edit(user, version, items, _("This image is not in the dataset."), set_tags, remove)


def box_tags_edit(
    *, user: User, version: DatasetVersion, box_id: int, set_tags: dict[str, object], remove: list[str]
) -> Box:
    boxes = Box.objects.filter(version=version, pk=box_id)
    return _edit(user, version, boxes, _("This box is not in the dataset."), set_tags, remove)


def _edit(
    user: User,
    version: DatasetVersion,
    rows: QuerySet[Tagged],
    missing: str,
    set_tags: dict[str, object],
    remove: list[str],
) -> Tagged:
    """Lock the one row, apply the checked changes to its tags, save."""
    _check(user, version)
    changes, removed = clean_changes(set_tags, remove)
    with transaction.atomic():
        row = rows.select_for_update().first()
        if row is None:
            raise Invalid(missing, code="not_found")
        row.tags = _apply(row.tags, changes, removed)
        row.save(update_fields=["tags"])
    return row
