"""Helpers to build import archives for dataset tests."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image

from core.models import User
from datasets.models import DatasetVersion
from datasets.services import dataset_import_start, import_execute
from projects.models import Project


def jpeg(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size (a decompression bomb) in a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def voc(filename: str, objects: list[tuple[str, float, float, float, float]], extra: str = "") -> bytes:
    body = "".join(
        f"<object><name>{n}</name><difficult>1</difficult><pose>Left</pose>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return f"{extra}<annotation><filename>{filename}</filename>{body}</annotation>".encode()


def make_zip(path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def import_now(user: User, project: Project, name: str = "ds", **kwargs) -> DatasetVersion:
    """Start an import and run its task body in this process (the worker path is tested separately)."""
    version = dataset_import_start(user=user, project=project, name=name, **kwargs)
    import_execute(version.task_id)
    version.refresh_from_db()
    return version
