"""Reading import sources safely: zip archives (with bomb, traversal and symlink checks) and folders."""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.utils.translation import gettext as _

from core.errors import Invalid


class SourceRefused(Invalid):
    code = "source_refused"


@dataclass(frozen=True)
class Limits:
    max_entries: int
    max_total_bytes: int
    max_entry_bytes: int
    max_ratio: float

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(
            max_entries=settings.YMIR_IMPORT_MAX_ENTRIES,
            max_total_bytes=settings.YMIR_IMPORT_MAX_TOTAL_BYTES,
            max_entry_bytes=settings.YMIR_IMPORT_MAX_ENTRY_BYTES,
            max_ratio=settings.YMIR_IMPORT_MAX_RATIO,
        )


def _safe_name(name: str) -> str:
    """A relative POSIX path with no '..', no drive, no absolute root; else refuse the archive."""
    if "\\" in name or "\x00" in name:
        raise SourceRefused(_("Unsafe entry name in the archive: %(name)s") % {"name": name[:200]})
    path = PurePosixPath(name)
    if path.is_absolute() or any(part == ".." for part in path.parts) or (path.parts and ":" in path.parts[0]):
        raise SourceRefused(_("Unsafe entry name in the archive: %(name)s") % {"name": name[:200]})
    return str(path)


class ZipSource:
    """Entries of a zip, checked as a whole before anything is read."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits.from_settings()
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceRefused(_("The file is not a readable zip archive (%(why)s).") % {"why": exc}) from exc
        self.entries: dict[str, zipfile.ZipInfo] = {}
        self.duplicates: list[str] = []
        self._check()

    def _check(self) -> None:
        infos = self.zip.infolist()
        if len(infos) > self.limits.max_entries:
            raise SourceRefused(
                _("The archive has %(n)d entries; the limit is %(limit)d.")
                % {"n": len(infos), "limit": self.limits.max_entries}
            )
        total = 0
        for info in infos:
            name = _safe_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise SourceRefused(_("The archive contains a symbolic link: %(name)s") % {"name": name[:200]})
            if info.is_dir():
                continue
            total += info.file_size
            if info.file_size > self.limits.max_entry_bytes:
                raise SourceRefused(_("An entry is too large: %(name)s") % {"name": name[:200]})
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1 << 20 and ratio > self.limits.max_ratio:
                raise SourceRefused(
                    _("An entry expands suspiciously (ratio %(ratio).0f): %(name)s")
                    % {"ratio": ratio, "name": name[:200]}
                )
            if name in self.entries:
                self.duplicates.append(name)
                continue
            self.entries[name] = info
        if total > self.limits.max_total_bytes:
            raise SourceRefused(
                _("The archive expands to %(n)d bytes; the limit is %(limit)d.")
                % {"n": total, "limit": self.limits.max_total_bytes}
            )

    def names(self) -> list[str]:
        return list(self.entries)

    def spec(self) -> tuple[str, str, Limits]:
        """What a worker process needs to read the same (already checked) entries."""
        return ("zip", str(self.path), self.limits)

    def read(self, name: str) -> bytes:
        info = self.entries[name]
        # Read at most the declared size plus one byte: a lying header cannot make us read more.
        with self.zip.open(info) as handle:
            data = handle.read(info.file_size + 1)
        if len(data) > info.file_size:
            raise SourceRefused(_("An entry is larger than its header says: %(name)s") % {"name": name[:200]})
        return data

    def close(self) -> None:
        self.zip.close()


class FolderSource:
    """Files under a folder inside the sharing root; symlinks and anything resolving outside are refused."""

    def __init__(self, root: Path, limits: Limits | None = None) -> None:
        self.path = root
        self.limits = limits or Limits.from_settings()
        self.root = root
        self.entries: dict[str, Path] = {}
        self.duplicates: list[str] = []
        total = 0
        for path in self._walk(root):
            rel = path.relative_to(root).as_posix()
            size = path.stat().st_size
            total += size
            self.entries[rel] = path
            if len(self.entries) > self.limits.max_entries or total > self.limits.max_total_bytes:
                raise SourceRefused(_("The folder is larger than the import limits."))

    def _walk(self, root: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            base = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
            for filename in filenames:
                path = base / filename
                if path.is_symlink():
                    raise SourceRefused(_("The folder contains a symbolic link: %(name)s") % {"name": filename})
                if path.is_file():
                    yield path

    def names(self) -> list[str]:
        return list(self.entries)

    def spec(self) -> tuple[str, str, Limits]:
        return ("folder", str(self.root), self.limits)

    def read(self, name: str) -> bytes:
        path = self.entries[name]
        if path.is_symlink():
            raise SourceRefused(_("The folder contains a symbolic link: %(name)s") % {"name": name[:200]})
        if path.stat().st_size > self.limits.max_entry_bytes:
            raise SourceRefused(_("An entry is too large: %(name)s") % {"name": name[:200]})
        return path.read_bytes()

    def close(self) -> None:
        return None


def sharing_path(relative: str) -> Path:
    """A folder under YMIR_SHARING_ROOT; '..' and symlinks that leave the root are refused."""
    root_setting = settings.YMIR_SHARING_ROOT
    if not root_setting:
        raise SourceRefused(_("Server-path import is off: no sharing root is configured."))
    root = Path(root_setting).resolve()
    candidate = (root / relative.lstrip("/")).resolve()
    if candidate != root and root not in candidate.parents:
        raise SourceRefused(_("The path is outside the sharing root."))
    if not candidate.is_dir():
        raise SourceRefused(_("No such folder under the sharing root: %(path)s") % {"path": relative[:200]})
    return candidate


class CheckedReader:
    """Reads entries of a source that the parent process has already checked (in import worker processes)."""

    def __init__(self, spec: tuple[str, str, Limits]) -> None:
        self.kind, path, self.limits = spec
        self.root = Path(path)
        self.zip = zipfile.ZipFile(self.root) if self.kind == "zip" else None

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            info = self.zip.getinfo(name)
            with self.zip.open(info) as handle:
                data = handle.read(info.file_size + 1)
            if len(data) > info.file_size:
                raise SourceRefused(f"An entry is larger than its header says: {name[:200]}")
            return data
        path = self.root / name
        if path.is_symlink() or path.stat().st_size > self.limits.max_entry_bytes:
            raise SourceRefused(f"Refused entry: {name[:200]}")
        return path.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
