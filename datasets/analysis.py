"""Dataset analysis: overall figures and distributions, from a few grouped SQL scans (never row by row).

Images: one scan of memberships joined to assets, grouped by (file-size bin, aspect bin, megapixel bin);
the three distributions are margins of that table. Boxes: one scan grouped by (layer, class, area bin,
box-size bin). Labelled images: one COUNT(DISTINCT).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from django.db import connection, transaction

from datasets.models import DatasetVersion, LabelClass

KB = 1024
SIZE_EDGES: list[float] = [20 * KB, 50 * KB, 100 * KB, 200 * KB, 500 * KB, 1024 * KB, 2048 * KB, 5120 * KB]
ASPECT_EDGES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.8, 2.2]
MEGAPIXEL_EDGES = [0.1, 0.3, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
AREA_EDGES = [0.0025, 0.01, 0.04, 0.09, 0.16, 0.25, 0.5]  # box area / image area
QUALITY_EDGES: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
SIDE_EDGES: list[float] = [
    16,
    32,
    64,
    96,
    128,
    256,
    512,
]  # sqrt(box area) in pixels (COCO's small/medium/large at 32/96)


def _case(expression: str, edges: list[float]) -> str:
    """The bin of a value: how many edges are at or below it (0 .. len(edges))."""
    if connection.vendor == "postgresql":  # evaluates the expression once, binary search over the edges
        return f"width_bucket(({expression})::float8, ARRAY{[float(e) for e in edges]!r}::float8[])"
    whens = " ".join(f"WHEN {expression} < {edge!r} THEN {i}" for i, edge in enumerate(edges))
    return f"CASE {whens} ELSE {len(edges)} END"


def _labels(edges: list[float], fmt: Any) -> list[str]:
    return (
        [f"< {fmt(edges[0])}"]
        + [f"{fmt(a)} - {fmt(b)}" for a, b in itertools.pairwise(edges)]
        + [f"≥ {fmt(edges[-1])}"]
    )


def _size(value: float) -> str:
    return f"{value / 1024 / 1024:g} MB" if value >= 1024 * 1024 else f"{value / 1024:g} KB"


def analyse(version: DatasetVersion) -> dict[str, Any]:
    image_bins = (
        _case("a.size_bytes", SIZE_EDGES),
        _case("(a.width * 1.0 / a.height)", ASPECT_EDGES),
        _case("(a.width * a.height / 1000000.0)", MEGAPIXEL_EDGES),
        f"CASE WHEN a.quality IS NULL THEN -1 ELSE {_case('a.quality', QUALITY_EDGES)} END",
    )
    box_area = "((b.x2 - b.x1) * (b.y2 - b.y1))"
    box_bins = (
        _case(f"({box_area} / (a.width * a.height * 1.0))", AREA_EDGES),
        _case(f"{box_area}", [e * e for e in SIDE_EDGES]),
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # the distinct count of a 100k version sorts in memory, not on disk
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(
            f"SELECT {image_bins[0]}, {image_bins[1]}, {image_bins[2]}, {image_bins[3]}, COUNT(*), SUM(a.size_bytes) "
            "FROM datasets_datasetasset x JOIN datasets_asset a ON a.id = x.asset_id WHERE x.version_id = %s "
            "GROUP BY 1, 2, 3, 4",
            [version.pk],
        )
        image_rows = cursor.fetchall()
        cursor.execute(
            "SELECT b.prediction_set_id IS NULL, b.label_id, "
            f"{box_bins[0]}, {box_bins[1]}, COUNT(*) "
            "FROM datasets_box b JOIN datasets_asset a ON a.id = b.asset_id WHERE b.version_id = %s "
            "GROUP BY 1, 2, 3, 4",
            [version.pk],
        )
        box_rows = cursor.fetchall()
        cursor.execute(
            "SELECT COUNT(DISTINCT asset_id) FROM datasets_box WHERE version_id = %s AND prediction_set_id IS NULL",
            [version.pk],
        )
        (labelled,) = cursor.fetchone() or (0,)

    sizes, aspects, megapixels, qualities = (
        [0] * (len(e) + 1) for e in (SIZE_EDGES, ASPECT_EDGES, MEGAPIXEL_EDGES, QUALITY_EDGES)
    )
    images = storage = scored = 0
    for size_bin, aspect_bin, mp_bin, quality_bin, count, total in image_rows:
        if quality_bin >= 0:
            qualities[quality_bin] += count
            scored += count
        sizes[size_bin] += count
        aspects[aspect_bin] += count
        megapixels[mp_bin] += count
        images += count
        storage += int(total or 0)
    names = dict(LabelClass.objects.values_list("id", "name"))
    layers: dict[str, dict[str, Any]] = {}
    for layer in ("gt", "pred"):
        layers[layer] = {
            "boxes": 0,
            "classes": defaultdict(int),
            "area": [0] * (len(AREA_EDGES) + 1),
            "side": [0] * (len(SIDE_EDGES) + 1),
        }
    for is_gt, label_id, area_bin, side_bin, count in box_rows:
        entry = layers["gt" if is_gt else "pred"]
        entry["boxes"] += count
        entry["classes"][names.get(label_id, str(label_id))] += count
        entry["area"][area_bin] += count
        entry["side"][side_bin] += count
    for entry in layers.values():
        entry["classes"] = dict(sorted(entry["classes"].items()))
    gt_boxes = layers["gt"]["boxes"]
    return {
        "id": version.pk,
        "name": f"{version.group.name} v{version.number}",
        "overall": {
            "images": images,
            "storage_bytes": storage,
            "gt_boxes": gt_boxes,
            "pred_boxes": layers["pred"]["boxes"],
            "boxes_per_image": gt_boxes / images if images else 0.0,
            "labelled_images": int(labelled),
            "labelled_share": int(labelled) / images if images else 0.0,
        },
        "images": {
            "file_size": {"bins": _labels(SIZE_EDGES, _size), "counts": sizes},
            "aspect_ratio": {"bins": _labels(ASPECT_EDGES, lambda v: f"{v:g}"), "counts": aspects},
            "megapixels": {"bins": _labels(MEGAPIXEL_EDGES, lambda v: f"{v:g}"), "counts": megapixels},
        },
        "boxes": {
            layer: {
                "count": entry["boxes"],
                "classes": entry["classes"],
                "relative_area": {"bins": _labels(AREA_EDGES, lambda v: f"{v:.2%}"), "counts": entry["area"]},
                "side_pixels": {"bins": _labels(SIDE_EDGES, lambda v: f"{v:g}px"), "counts": entry["side"]},
            }
            for layer, entry in layers.items()
        },
        "quality": {
            "scored_images": scored,
            "bins": _labels(QUALITY_EDGES, lambda v: f"{v:g}"),
            "counts": qualities,
        },
    }
