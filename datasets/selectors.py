from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from core.models import User
from datasets.models import DatasetVersion


def versions_visible_to(user: User) -> QuerySet[DatasetVersion]:
    """Versions of the user's own projects, and public ones."""
    return DatasetVersion.objects.filter(Q(group__project__owner=user) | Q(is_public=True)).select_related(
        "group__project", "task"
    )


def version_visible_to(user: User, version_id: int) -> DatasetVersion:
    version = versions_visible_to(user).filter(pk=version_id).first()
    if version is None:
        raise Http404("No such dataset.")
    return version


def versions_of_project(project_id: int) -> QuerySet[DatasetVersion]:
    return (
        DatasetVersion.objects.filter(group__project_id=project_id)
        .select_related("group", "task")
        .order_by("-created_at", "-id")
    )


def browse_items(
    version: DatasetVersion,
    *,
    label_id: int | None = None,
    tag: tuple[str, str] | None = None,
    box_tag: tuple[str, str] | None = None,
    kind: str = "",
    after: int = 0,
    limit: int = 48,
    asset_ids: set[int] | None = None,
) -> tuple[list[Any], int | None]:
    """A page of a version's images in id order (keyset: the cost does not grow with the page number).

    kind: "gt" (with ground truth), "pred" (with predictions), "unlabelled" (no ground truth), or "" (all);
    asset_ids: only these images.
    Answers the items (with their assets) and the cursor of the next page, if any.
    """
    from datasets.models import Box, DatasetAsset

    items = DatasetAsset.objects.filter(version=version).select_related("asset").order_by("id")
    if label_id is not None:
        items = items.filter(asset_id__in=Box.objects.filter(version=version, label_id=label_id).values("asset_id"))
    if tag is not None:
        items = items.filter(**{f"tags__{tag[0]}": tag[1]})
    if box_tag is not None:
        tagged = Box.objects.filter(version=version, **{f"tags__{box_tag[0]}": box_tag[1]})
        items = items.filter(asset_id__in=tagged.values("asset_id"))
    boxes = Box.objects.filter(version=version, asset_id=OuterRef("asset_id"))
    if kind == "gt":
        items = items.filter(Exists(boxes.filter(prediction_set__isnull=True)))
    elif kind == "pred":
        items = items.filter(Exists(boxes.filter(prediction_set__isnull=False)))
    elif kind == "unlabelled":
        items = items.exclude(Exists(boxes.filter(prediction_set__isnull=True)))
    if asset_ids is not None:  # a set computed elsewhere (e.g. images with a missed object): walk the keyset
        page: list[Any] = []
        cursor = after
        while len(page) <= limit:
            chunk = list(items.filter(id__gt=cursor)[:2000])
            if not chunk:
                break
            page += [item for item in chunk if item.asset_id in asset_ids]
            cursor = chunk[-1].pk
    else:
        page = list(items.filter(id__gt=after)[: limit + 1])
    return page[:limit], (page[limit - 1].pk if len(page) > limit else None)


def random_start(version: DatasetVersion) -> int:
    """A random place in the version's id range, for the 'random images' view (no full scan)."""
    import random

    from django.db.models import Max, Min

    from datasets.models import DatasetAsset

    bounds = DatasetAsset.objects.filter(version=version).aggregate(low=Min("id"), high=Max("id"))
    if bounds["low"] is None:
        return 0
    return random.randint(bounds["low"], bounds["high"]) - 1  # noqa: S311 (browsing, not security)
