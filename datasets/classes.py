"""The label registry: classes with a main name and aliases, unique across both regardless of case."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils.translation import gettext as _

from core.errors import Conflict, Invalid
from core.models import User
from datasets.models import Box, LabelClass, LabelKeyword

MAX_NAME = 100


def _clean(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise Invalid(_("A class name cannot be empty."), code="invalid_class_name")
    if len(name) > MAX_NAME:
        raise Invalid(_("A class name has at most 100 characters."), code="invalid_class_name")
    return name


def resolve_keywords(names: Iterable[str]) -> dict[str, int]:
    """Map names (any case, main names or aliases) to class ids; unknown names are absent."""
    wanted = {" ".join(n.split()).lower() for n in names}
    if not wanted:
        return {}
    rows = LabelKeyword.objects.annotate(low=Lower("keyword")).filter(low__in=wanted).values_list("low", "label_id")
    return dict(rows)


def class_create(*, user: User | None, name: str, aliases: Iterable[str] = ()) -> LabelClass:
    name = _clean(name)
    alias_list = [_clean(a) for a in aliases]
    keywords = [name, *alias_list]
    if len({k.lower() for k in keywords}) != len(keywords):
        raise Invalid(_("A name or alias is repeated."), code="duplicate_keyword")
    taken = resolve_keywords(keywords)
    if taken:
        raise Conflict(
            _("Already in use as a class name or alias: %(names)s") % {"names": ", ".join(sorted(taken))},
            code="class_name_taken",
            details={"taken": sorted(taken)},
        )
    try:
        with transaction.atomic():
            label = LabelClass.objects.create(name=name, created_by=user)
            LabelKeyword.objects.bulk_create(
                [LabelKeyword(label=label, keyword=k, is_main=(i == 0)) for i, k in enumerate(keywords)]
            )
    except IntegrityError as exc:  # a concurrent creation took the name
        raise Conflict(_("That class name was just taken."), code="class_name_taken") from exc
    return label


def classes_create_batch(*, user: User | None, text: str) -> tuple[list[LabelClass], list[str]]:
    """One class per line; ``name, alias, alias`` adds aliases. Lines whose names exist are skipped."""
    created: list[LabelClass] = []
    skipped: list[str] = []
    for line in text.splitlines():
        parts = [p for p in (s.strip() for s in line.split(",")) if p]
        if not parts:
            continue
        try:
            created.append(class_create(user=user, name=parts[0], aliases=parts[1:]))
        except (Conflict, Invalid) as exc:
            skipped.append(f"{line.strip()}: {exc.message}")
    return created, skipped


def class_rename(*, label: LabelClass, name: str) -> LabelClass:
    name = _clean(name)
    other = resolve_keywords([name]).get(name.lower())
    if other is not None and other != label.pk:
        raise Conflict(
            _("Already in use as a class name or alias: %(names)s") % {"names": name}, code="class_name_taken"
        )
    with transaction.atomic():
        LabelKeyword.objects.filter(label=label, is_main=True).delete()
        LabelKeyword.objects.filter(label=label, keyword__iexact=name).delete()
        LabelKeyword.objects.create(label=label, keyword=name, is_main=True)
        label.name = name
        label.save(update_fields=["name"])
        _recount(list(Box.objects.filter(label=label).values_list("version_id", flat=True).distinct()))
    return label


def class_add_alias(*, label: LabelClass, alias: str) -> LabelKeyword:
    alias = _clean(alias)
    if resolve_keywords([alias]):
        raise Conflict(
            _("Already in use as a class name or alias: %(names)s") % {"names": alias},
            code="class_name_taken",
        )
    return LabelKeyword.objects.create(label=label, keyword=alias)


def class_remove_alias(*, label: LabelClass, alias: str) -> None:
    LabelKeyword.objects.filter(label=label, keyword__iexact=alias, is_main=False).delete()


def class_merge(*, source: LabelClass, target: LabelClass) -> LabelClass:
    """Every box of ``source`` becomes ``target``; source's names become target's aliases."""
    if source.pk == target.pk:
        raise Invalid(_("A class cannot be merged into itself."), code="merge_self")
    with transaction.atomic():
        version_ids = list(Box.objects.filter(label=source).values_list("version_id", flat=True).distinct())
        Box.objects.filter(label=source).update(label=target)
        LabelKeyword.objects.filter(label=source).update(label=target, is_main=False)
        source.delete()
        _recount(version_ids)
    return target


def _recount(version_ids: list[int]) -> None:
    """Per-class counts are stored by main name: refresh them where a rename or merge changed names."""
    from datasets.importer import version_counts
    from datasets.models import DatasetVersion

    for version in DatasetVersion.objects.filter(pk__in=version_ids):
        for key, value in version_counts(version).items():
            setattr(version, key, value)
        version.save(update_fields=["asset_count", "gt_box_count", "pred_box_count", "class_counts"])
