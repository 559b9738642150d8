"""The shared workspace: assets, task folders and models all live under ``YMIR_WORKSPACE``."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

SUBFOLDERS = ("assets", "tasks", "models", "uploads")


@dataclass(frozen=True)
class WorkspaceStatus:
    path: Path
    exists: bool
    writable: bool
    free_bytes: int | None
    total_bytes: int | None

    @property
    def low_space(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < settings.YMIR_WORKSPACE_MIN_FREE_BYTES


def workspace_root() -> Path:
    return Path(settings.YMIR_WORKSPACE)


def workspace_prepare() -> Path:
    root = workspace_root()
    for name in SUBFOLDERS:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def workspace_status() -> WorkspaceStatus:
    root = workspace_root()
    exists = root.is_dir()
    writable = exists and os.access(root, os.W_OK | os.X_OK)
    free = total = None
    if exists:
        usage = shutil.disk_usage(root)
        free, total = usage.free, usage.total
    return WorkspaceStatus(path=root, exists=exists, writable=writable, free_bytes=free, total_bytes=total)
