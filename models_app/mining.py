"""Platform-side mining strategies on top of the image's scores (applied when a mining run lands).

- **Class balance** (needs the run's predictions): an image predicted to hold classes that are rare in the
  model's training set moves up. Its score is multiplied by ``sqrt(most common / this class)`` of its rarest
  predicted class (1 for the most common class; images with no prediction keep their score).
- **Diversity**: near-duplicates are skipped. Images are taken in score order; one whose 64-bit difference
  hash (9x8 grey, Pillow draft mode) is within ``HAMMING`` bits of an image already taken is passed over.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from datasets.classes import resolve_keywords
from datasets.models import Box
from datasets.store import asset_path

HAMMING = 6


def class_balanced(
    scores: list[tuple[str, float]], predictions: dict[str, list[dict[str, Any]]], train_version_id: int | None
) -> list[tuple[str, float]]:
    if train_version_id is None:
        return scores
    counts: dict[int, int] = {}
    for label in Box.objects.filter(version_id=train_version_id, prediction_set__isnull=True).values_list(
        "label_id", flat=True
    ):
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return scores
    top = max(counts.values())
    names = {box["class_name"] for boxes in predictions.values() for box in boxes}
    ids = resolve_keywords(names)
    weight = {
        name: math.sqrt(top / counts[ids[" ".join(name.split()).lower()]])
        for name in names
        if counts.get(ids.get(" ".join(name.split()).lower(), -1))
    }
    boosted = []
    for sha1, score in scores:
        factors = [weight.get(box["class_name"], 1.0) for box in predictions.get(sha1, [])]
        boosted.append((sha1, score * (max(factors) if factors else 1.0)))
    return sorted(boosted, key=lambda item: -item[1])


def dhash(sha1: str) -> int | None:
    try:
        with Image.open(asset_path(sha1)) as image:
            image.draft("L", (64, 64))
            small = image.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    except (OSError, ValueError):
        return None
    pixels = list(small.tobytes())  # one byte a pixel (mode L)
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (pixels[row * 9 + col] > pixels[row * 9 + col + 1])
    return bits


def diverse(scores: list[tuple[str, float]], top_k: int) -> tuple[list[tuple[str, float]], int]:
    """The best ``top_k`` images without near-duplicates among them; and how many were passed over."""
    taken: list[tuple[str, float]] = []
    hashes: list[int] = []
    skipped = 0
    for sha1, score in scores:
        if len(taken) >= top_k:
            break
        value = dhash(sha1)
        if value is not None and any(bin(value ^ other).count("1") <= HAMMING for other in hashes):
            skipped += 1
            continue
        if value is not None:
            hashes.append(value)
        taken.append((sha1, score))
    return taken, skipped
