"""The follow-up pass after an import: a thumbnail and a quality score per new image (full decode).

It never holds a version back: the version is ready before this pass starts, and pages fall back to the
original image until a thumbnail exists.

Quality score (0..1, higher is better), computed on the 256-pixel thumbnail in grey levels:
  0.5 x sharpness (variance of the 4-neighbour Laplacian, saturating: v / (v + 100))
+ 0.25 x exposure (1 - |mean - 128| / 128)
+ 0.25 x contrast (standard deviation / 64, capped at 1).
Blurred, dark, washed-out or flat images score low. It is a triage aid, not a perceptual metric.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

THUMB_SIZE = 256


def thumbnail_path(sha1: str, root: Path) -> Path:
    return root / "thumbnails" / sha1[:2] / f"{sha1}.jpg"


def quality_score(grey: np.ndarray) -> float:
    g = grey.astype(np.float32)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    variance = float(lap.var()) if lap.size else 0.0
    sharpness = variance / (variance + 100.0)
    exposure = 1.0 - abs(float(g.mean()) - 128.0) / 128.0
    contrast = min(1.0, float(g.std()) / 64.0)
    return round(0.5 * sharpness + 0.25 * exposure + 0.25 * contrast, 4)


def thumbnail_chunk(root: str, max_pixels: int, items: Sequence[tuple[int, str]]) -> list[tuple[int, float | None]]:
    """(asset id, quality) per image; None when the image does not decode (the thumbnail is then missing)."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # these images passed the header check; decode under the same limit
    base = Path(root)
    out: list[tuple[int, float | None]] = []
    for asset_id, sha1 in items:
        try:
            with Image.open(base / "assets" / sha1[:2] / sha1) as image:
                image.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at a reduced scale
                small = image.convert("RGB")
                small.thumbnail((THUMB_SIZE, THUMB_SIZE))
            target = thumbnail_path(sha1, base)
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
            tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, target)
            out.append((asset_id, quality_score(np.asarray(small.convert("L")))))
        except Exception:  # a truncated or corrupt body: the header was fine, the pixels are not
            out.append((asset_id, None))
    return out
