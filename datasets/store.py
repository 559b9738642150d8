"""The content-addressed asset store: ``<workspace>/assets/<sha1[:2]>/<sha1>``, each image stored once."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from PIL import Image

from core.workspace import workspace_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
FORMATS = {"JPEG": "jpeg", "PNG": "png", "BMP": "bmp"}


class ImageRejected(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    sha1: str
    width: int
    height: int
    size_bytes: int
    format: str


def asset_path(sha1: str, root: Path | None = None) -> Path:
    return (root or workspace_root()) / "assets" / sha1[:2] / sha1


def inspect_image(data: bytes, max_pixels: int | None = None) -> ImageInfo:
    """Hash and read the header only (no full decode); refuse bombs, unknown formats and truncated files."""
    limit = max_pixels or settings.YMIR_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                fmt = FORMATS.get(image.format or "")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image too large in pixels (decompression bomb)") from exc
    except Exception as exc:  # Pillow raises many kinds for corrupt input
        if "truncated" in str(exc).lower():
            raise ImageRejected("truncated image") from exc
        raise ImageRejected(f"not a readable image ({type(exc).__name__})") from exc
    if fmt is None:
        raise ImageRejected("unsupported image format")
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels")
    if width * height > limit:
        raise ImageRejected(f"image too large: {width}x{height} pixels (limit {limit})")
    if _looks_truncated(data, fmt):
        raise ImageRejected("truncated image")
    return ImageInfo(hashlib.sha1(data).hexdigest(), width, height, len(data), fmt)  # noqa: S324 (content address)


def _looks_truncated(data: bytes, fmt: str) -> bool:
    """Cheap end-of-file checks; the follow-up full decode catches the rest."""
    if fmt == "jpeg":
        return b"\xff\xd9" not in data[-4096:]
    if fmt == "png":
        return b"IEND" not in data[-64:]
    return False


_KNOWN_FOLDERS: set[Path] = set()


def store_bytes(sha1: str, data: bytes, root: Path | None = None) -> bool:
    """Write the bytes once; True if they were new. Atomic: a reader never sees a partial file."""
    path = asset_path(sha1, root)
    if path.exists():
        return False
    if path.parent not in _KNOWN_FOLDERS:
        path.parent.mkdir(parents=True, exist_ok=True)
        _KNOWN_FOLDERS.add(path.parent)
    tmp = path.parent / f".tmp-{os.getpid()}-{sha1}"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the folder went away since we saw it
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
