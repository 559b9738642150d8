"""Editing asset tags (per image of a version) and box tags (per box): key/value metadata about the data.

Tags describe the data rather than being it, so they stay editable on a ready version (its images and boxes
do not change). Only the project's owner edits; keys are short identifiers, values short strings.
"""

from __future__ import annotations

import re

from django.db import transaction
from django.utils.translation import gettext as _

from core.errors import Conflict, Forbidden, Invalid
from core.models import User
from datasets.models import Box, DatasetAsset, DatasetVersion

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
    _check(user, version)
    changes, removed = clean_changes(set_tags, remove)
    with transaction.atomic():
        item = DatasetAsset.objects.select_for_update().filter(version=version, asset_id=asset_id).first()
        if item is None:
            raise Invalid(_("This image is not in the dataset."), code="not_found")
        item.tags = _apply(item.tags, changes, removed)
        item.save(update_fields=["tags"])
    return item


def box_tags_edit(
    *, user: User, version: DatasetVersion, box_id: int, set_tags: dict[str, object], remove: list[str]
) -> Box:
    _check(user, version)
    changes, removed = clean_changes(set_tags, remove)
    with transaction.atomic():
        box = Box.objects.select_for_update().filter(version=version, pk=box_id).first()
        if box is None:
            raise Invalid(_("This box is not in the dataset."), code="not_found")
        box.tags = _apply(box.tags, changes, removed)
        box.save(update_fields=["tags"])
    return box
