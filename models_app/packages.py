"""Model packages: export a model version as YMIR's tar.gz, import one, or import a bare ONNX graph.

YMIR's package: a gzipped tar with one folder per stage holding its files, and ``ymir-info.yaml``:
``executor_config`` (the config the run used, with ``class_names``), ``task_context`` (who made it, mAP),
``stages`` (per stage: ``files``, ``mAP``, ``timestamp``) and ``best_stage_name``. Older packages list
``models`` (files at the root) instead of stages; they import as one stage named ``default``.

Imports are checked before anything is written: only regular files under plain relative paths (no ``..``,
no absolute paths, no links or devices), sizes bounded, safe YAML only. Files are copied to the model's
folder; the version row and the files appear together (the folder is removed if the rows fail).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from core.errors import Invalid
from models_app.landing import model_dir
from models_app.models import ExecutorImage, ModelGroup, ModelStage, ModelVersion
from projects.models import Project

INFO = "ymir-info.yaml"
MAX_MEMBERS = 2000


def export_package(version: ModelVersion, out: IO[bytes]) -> None:
    """Write the version as a YMIR model package (tar.gz) to ``out``."""
    folder = model_dir(version.pk)
    stages = list(version.stages.all())
    info = {
        "executor_config": {**(version.config or {}), "class_names": list(version.class_names)},
        "task_context": {
            "producer": "ymir platform",
            "executor": version.image.name if version.image else "",
            "model": str(version),
            "mAP": max((s.metrics.get("AP") or 0.0 for s in stages), default=0.0),
        },
        "stages": {
            s.name: {
                "files": [PurePosixPath(f).name for f in s.files],
                "mAP": s.metrics.get("AP") if s.metrics.get("AP") is not None else (s.reported_map or 0.0),
                "timestamp": int(s.timestamp or 0),
            }
            for s in stages
        },
        "best_stage_name": version.recommended_stage,
    }
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = yaml.safe_dump(info, sort_keys=False, allow_unicode=True).encode()
        member = tarfile.TarInfo(INFO)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
        for stage in stages:
            for relative in stage.files:
                source = folder / relative
                if source.is_file():
                    tar.add(source, arcname=f"{stage.name}/{PurePosixPath(relative).name}", recursive=False)


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts) or "\\" in name:
        raise Invalid(_("The package holds an unsafe path: %(name)s") % {"name": name}, code="unsafe_path")
    return path


@contextmanager
def _open_tar(upload: IO[bytes]) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(fileobj=upload, mode="r:*") as tar:
            yield tar
    except (tarfile.TarError, EOFError) as exc:
        raise Invalid(_("Not a model package (tar.gz): %(e)s") % {"e": exc}, code="invalid_package") from None


def _read_package(tar: tarfile.TarFile) -> tuple[dict[str, Any], dict[PurePosixPath, tarfile.TarInfo]]:
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Invalid(_("Not a model package (tar.gz): %(e)s") % {"e": exc}, code="invalid_package") from None
    if len(members) > MAX_MEMBERS:
        raise Invalid(_("The package holds too many files."), code="invalid_package")
    files: dict[PurePosixPath, tarfile.TarInfo] = {}
    total = 0
    for member in members:
        path = _safe_name(member.name.removeprefix("./")) if member.name not in (".", "./") else None
        if path is None or member.isdir():
            continue
        if not member.isfile():
            raise Invalid(
                _("The package holds a link or a special file: %(name)s") % {"name": member.name}, code="unsafe_path"
            )
        total += member.size
        files[path] = member
    if total > settings.YMIR_MODEL_PACKAGE_MAX_BYTES:
        raise Invalid(_("The package is too large."), code="invalid_package")
    info_member = files.get(PurePosixPath(INFO))
    if info_member is None:
        raise Invalid(_("The package has no ymir-info.yaml."), code="missing_info")
    handle = tar.extractfile(info_member)
    try:
        info = yaml.safe_load(handle.read() if handle else b"")
    except yaml.YAMLError as exc:
        raise Invalid(_("ymir-info.yaml is not valid YAML: %(e)s") % {"e": exc}, code="invalid_info") from None
    if not isinstance(info, dict):
        raise Invalid(_("ymir-info.yaml is not a mapping."), code="invalid_info")
    return info, files


def _stages_of(info: dict[str, Any], files: dict[PurePosixPath, tarfile.TarInfo]) -> dict[str, dict[str, Any]]:
    stages = info.get("stages")
    if isinstance(stages, dict) and stages:
        out = {}
        for name, stage in stages.items():
            stage = stage if isinstance(stage, dict) else {}
            _safe_name(str(name))
            listed = [str(f) for f in stage.get("files") or []]
            paths = [PurePosixPath(str(name)) / PurePosixPath(f).name for f in listed]
            missing = [str(p) for p in paths if p not in files]
            if missing or not paths:
                raise Invalid(
                    _("Stage %(stage)s lists files the package lacks: %(files)s")
                    % {"stage": name, "files": ", ".join(missing) or "-"},
                    code="invalid_info",
                )
            out[str(name)] = {"paths": paths, "mAP": stage.get("mAP"), "timestamp": stage.get("timestamp")}
        return out
    listed = [str(f) for f in info.get("models") or []]  # the old layout: files at the root
    paths = [PurePosixPath(f) for f in listed if PurePosixPath(f) in files]
    if not paths:
        raise Invalid(_("ymir-info.yaml names no stages and no model files."), code="invalid_info")
    return {"default": {"paths": paths, "mAP": (info.get("task_context") or {}).get("mAP"), "timestamp": None}}


def _new_version(
    project: Project, name: str, image: ExecutorImage | None, class_names: list[str], config: dict[str, Any]
) -> ModelVersion:
    group = ModelGroup.objects.filter(project=project, name__iexact=name).first()
    if group is None:
        group = ModelGroup.objects.create(project=project, name=name)
    ModelGroup.objects.select_for_update().filter(pk=group.pk).first()
    number = (group.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    return ModelVersion.objects.create(group=group, number=number, image=image, class_names=class_names, config=config)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def import_package(
    *,
    project: Project,
    upload: IO[bytes],
    filename: str,
    name: str,
    image: ExecutorImage | None = None,
    class_names: list[str] | None = None,
) -> ModelVersion:
    """A model version from a YMIR package (tar.gz) or an ONNX graph (with its class list)."""
    name = name.strip() or PurePosixPath(filename).name.split(".")[0] or "imported"
    if filename.lower().endswith(".onnx"):
        return _import_onnx(project=project, upload=upload, name=name, image=image, class_names=class_names or [])
    with _open_tar(upload) as tar:
        return _import_tar(project, tar, name, image, class_names)


def _import_tar(
    project: Project, tar: tarfile.TarFile, name: str, image: ExecutorImage | None, class_names: list[str] | None
) -> ModelVersion:
    info, files = _read_package(tar)
    raw_config = info.get("executor_config")
    config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
    names = [str(n) for n in (config.get("class_names") or class_names or [])]
    if not names:
        raise Invalid(_("The package names no classes (executor_config.class_names)."), code="invalid_info")
    stages = _stages_of(info, files)
    best = str(info.get("best_stage_name") or "")
    best = best if best in stages else next(iter(stages))
    with transaction.atomic():
        version = _new_version(project, name, image, names, config)
        version.recommended_stage = best
        version.save(update_fields=["recommended_stage"])
        target = model_dir(version.pk)
        shutil.rmtree(target, ignore_errors=True)
        try:
            for stage_name, stage in stages.items():
                kept = []
                for path in stage["paths"]:
                    source = tar.extractfile(files[path])
                    relative = Path(stage_name) / path.name
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    with (target / relative).open("wb") as out:
                        shutil.copyfileobj(source, out)  # type: ignore[arg-type]
                    kept.append(str(relative))
                ModelStage.objects.create(
                    version=version,
                    name=stage_name,
                    files=kept,
                    reported_map=_number(stage["mAP"]),
                    timestamp=_number(stage["timestamp"]),
                )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return version


def _import_onnx(
    *, project: Project, upload: IO[bytes], name: str, image: ExecutorImage | None, class_names: list[str]
) -> ModelVersion:
    from models_app.onnx_predict import PredictError, load

    data = upload.read(settings.YMIR_MODEL_PACKAGE_MAX_BYTES + 1)
    if len(data) > settings.YMIR_MODEL_PACKAGE_MAX_BYTES:
        raise Invalid(_("The package is too large."), code="invalid_package")
    with transaction.atomic():
        version = _new_version(project, name, image, [], {})
        target = model_dir(version.pk)
        (target / "default").mkdir(parents=True, exist_ok=True)
        path = target / "default" / "model.onnx"
        path.write_bytes(data)
        try:
            try:
                names = load(path).class_names
            except PredictError as exc:
                if exc.code == "unloadable":
                    raise Invalid(str(exc), code="invalid_package") from None
                names = [n.strip() for n in class_names if n.strip()]
                if not names:
                    raise Invalid(
                        _("%(why)s. Give the class list.") % {"why": str(exc)}, code="missing_classes"
                    ) from None
            version.class_names = names
            version.recommended_stage = "default"
            version.config = {"class_names": names, "source": "onnx"}
            version.save(update_fields=["class_names", "recommended_stage", "config"])
            ModelStage.objects.create(version=version, name="default", files=["default/model.onnx"])
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return version


def class_list(text: str) -> list[str]:
    """Class names typed one per line, or as a JSON list."""
    text = text.strip()
    if text.startswith("["):
        try:
            return [str(n) for n in json.loads(text)]
        except ValueError:
            pass
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
