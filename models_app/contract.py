"""The executor contract (YMIR TMI protocol 1.1.0): what goes into ``/in`` and how ``/out`` is read back.

Pure functions over paths and dictionaries; no database. Every reader here refuses bad output with
``ContractError`` (a message for the user), never an unhandled exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

PROTOCOL_VERSION = "1.1.0"
IN, OUT = PurePosixPath("/in"), PurePosixPath("/out")
MANIFEST_FILE = "/img-man/manifest.yaml"
TEMPLATE_FILES = {
    "training": "training-template.yaml",
    "mining": "mining-template.yaml",
    "infer": "infer-template.yaml",
}
RESERVED_KEYS = frozenset(
    {
        "task_id",
        "class_names",
        "gpu_id",
        "gpu_count",
        "object_type",
        "pretrained_model_params",
        "model_params_path",
        "run_mining",
        "run_infer",
    }
)
EXPORT_FORMATS = {"ark", "det-ark", "voc", "det-voc", "coco", "seg-coco", "none"}
MAX_RESULT_BYTES = 256 << 20
LOG_FILE = "ymir-executor-out.log"


class ContractError(Exception):
    """Executor output or a template that breaks the contract; the message is meant for people."""


def env_yaml(*, task_id: str, run_training: bool, run_mining: bool, run_infer: bool) -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "task_id": task_id,
        "run_training": run_training,
        "run_mining": run_mining,
        "run_infer": run_infer,
        "manifest_file": MANIFEST_FILE,
        "input": {
            "root_dir": str(IN),
            "assets_dir": str(IN / "assets"),
            "annotations_dir": str(IN / "annotations"),
            "models_dir": str(IN / "models"),
            "training_index_file": str(IN / "train-index.tsv") if run_training else "",
            "val_index_file": str(IN / "val-index.tsv") if run_training else "",
            "candidate_index_file": str(IN / "candidate-index.tsv") if (run_mining or run_infer) else "",
            "config_file": str(IN / "config.yaml"),
        },
        "output": {
            "root_dir": str(OUT),
            "models_dir": str(OUT / "models"),
            "tensorboard_dir": str(OUT / "tensorboard"),
            "training_result_file": str(OUT / "models" / "result.yaml"),
            "mining_result_file": str(OUT / "result.tsv"),
            "infer_result_file": str(OUT / "infer-result.json"),
            "monitor_file": str(OUT / "monitor.txt"),
            "executor_log_file": str(OUT / LOG_FILE),
        },
    }


def config_yaml(template: dict[str, Any], user_values: dict[str, Any], reserved: dict[str, Any]) -> dict[str, Any]:
    """Template defaults, then the user's values, then the reserved keys, which always win."""
    unknown_reserved = set(reserved) - RESERVED_KEYS - {"shm_size", "export_format"}
    if unknown_reserved:
        raise ValueError(f"not reserved keys: {sorted(unknown_reserved)}")
    merged = {**template, **{k: v for k, v in user_values.items() if k not in RESERVED_KEYS}}
    merged.update(reserved)
    return merged


def parse_export_format(value: object) -> str:
    """The annotation part of ``ANNO:ASSET`` (empty means ``voc:raw``)."""
    text = str(value or "").strip() or "voc:raw"
    anno, _sep, asset = text.partition(":")
    anno = anno.strip().lower()
    if anno not in EXPORT_FORMATS or (asset and asset.strip().lower() != "raw"):
        raise ContractError(f"unsupported export_format {text!r} (annotations: ark, voc, coco or none; assets: raw)")
    return {"det-ark": "ark", "det-voc": "voc", "seg-coco": "coco"}.get(anno, anno)


# --- image capabilities ---------------------------------------------------------------------------


def load_yaml(text: str | bytes, what: str) -> Any:
    """Safe YAML only: a ``!!python/...`` tag or any other unsafe construct is refused with a message."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"{what} is not valid (safe) YAML: {str(exc).splitlines()[0]}") from None


def read_manifest(files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """From the files of ``/img-man`` (relative names), the manifest and one template per task type it has."""
    if "manifest.yaml" not in files:
        raise ContractError("the image has no /img-man/manifest.yaml: it is not an executor image")
    manifest = load_yaml(files["manifest.yaml"], "/img-man/manifest.yaml")
    if not isinstance(manifest, dict) or "object_type" not in manifest:
        raise ContractError("/img-man/manifest.yaml must be a mapping with object_type")
    object_type = manifest["object_type"]
    types = object_type if isinstance(object_type, list) else [object_type]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in types) or not types:
        raise ContractError("object_type in /img-man/manifest.yaml must be an integer or a list of integers")
    if 2 not in types:
        raise ContractError("the image does not do object detection (object_type 2)")
    prefix = "det/" if isinstance(object_type, list) else ""
    templates: dict[str, dict[str, Any]] = {}
    for kind, name in TEMPLATE_FILES.items():
        raw = files.get(prefix + name, files.get(name))
        if raw is None:
            continue
        template = load_yaml(raw, f"/img-man/{prefix}{name}")
        if template is None:
            template = {}
        if not isinstance(template, dict) or not all(isinstance(k, str) for k in template):
            raise ContractError(f"/img-man/{prefix}{name} must be a flat map of hyper-parameters")
        templates[kind] = template
    if not templates:
        raise ContractError("the image has no training, mining or infer template in /img-man")
    return manifest, templates


# --- /out -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Monitor:
    timestamp: float
    percent: float
    state: int
    error_code: str = ""
    message: str = ""


def read_monitor(path: Path) -> Monitor | None:
    """The first line of ``monitor.txt``; None when it is missing or makes no sense (never an exception)."""
    try:
        with path.open("rb") as handle:
            first = handle.read(4096).split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return None
    fields = first.rstrip("\r").split("\t")
    if len(fields) < 4:
        return None
    try:
        timestamp, percent, state = float(fields[1]), float(fields[2]), int(fields[3])
    except ValueError:
        return None
    if not (math.isfinite(timestamp) and math.isfinite(percent)) or state not in (1, 2, 3, 4):
        return None
    return Monitor(
        timestamp=timestamp,
        percent=max(0.0, min(1.0, percent)),
        state=state,
        error_code=fields[4].strip() if len(fields) > 4 else "",
        message="\t".join(fields[5:]).strip()[:2000],
    )


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise ContractError(f"the executor wrote no {what}")
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise ContractError(f"{what} is larger than {MAX_RESULT_BYTES >> 20} MiB")
    return path.read_text("utf-8", errors="replace")


def container_to_host(path: str, out_dir: Path, base: PurePosixPath = OUT) -> Path | None:
    """A path the executor wrote (absolute under /out, or relative to ``base``) as a host path inside
    ``out_dir``; None when it points elsewhere (``..``, another root, a link out)."""
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        pure = base / pure
    try:
        relative = pure.relative_to(OUT)
    except ValueError:
        return None
    if ".." in relative.parts:
        return None
    host = out_dir / relative
    try:
        host.resolve().relative_to(out_dir.resolve())
    except ValueError:
        return None
    return host


def read_training_result(out_dir: Path) -> dict[str, Any]:
    """``/out/models/result.yaml`` in the 1.1 form (``model_stages``) or the old one (``{model, map}``),
    as ``{"best_stage", "stages": {name: {"files", "mAP", "timestamp"}}}``; files must exist under /out."""
    models_dir = out_dir / "models"
    raw = load_yaml(_read_text(models_dir / "result.yaml", "/out/models/result.yaml"), "/out/models/result.yaml")
    if not isinstance(raw, dict):
        raise ContractError("/out/models/result.yaml must be a mapping")

    def files_of(names: object, base: PurePosixPath) -> list[str]:
        if not isinstance(names, list) or not names:
            raise ContractError("a model stage in result.yaml lists no files")
        kept = []
        for name in names:
            host = container_to_host(str(name), out_dir, base)
            if host is not None and host.is_file():
                kept.append(str(host.relative_to(models_dir)) if host.is_relative_to(models_dir) else str(host))
        if not kept:
            raise ContractError(f"none of the model files {names!r} exists under /out/models")
        return kept

    def number(value: object) -> float | None:
        try:
            result = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return result if math.isfinite(result) else None

    stages: dict[str, dict[str, Any]] = {}
    if isinstance(raw.get("model_stages"), dict):
        for key, stage in raw["model_stages"].items():
            if not isinstance(stage, dict):
                raise ContractError(f"stage {key!r} in result.yaml is not a mapping")
            name = str(stage.get("stage_name") or key)
            if not re.fullmatch(r"[\w.-]{1,100}", name):
                raise ContractError(f"stage name {name!r} is not a plain name")
            stages[name] = {
                "files": files_of(stage.get("files"), OUT / "models" / name),
                "mAP": number(stage.get("mAP")),
                "timestamp": number(stage.get("timestamp")),
            }
        best = str(raw.get("best_stage_name") or "")
        if best not in stages:
            best = max(stages, key=lambda s: stages[s]["mAP"] or -1.0) if stages else ""
    elif "model" in raw:  # protocol 1.0: {model: [files], map: X}
        stages["default"] = {"files": files_of(raw.get("model"), OUT / "models"), "mAP": number(raw.get("map"))}
        stages["default"]["timestamp"] = None
        best = "default"
    else:
        raise ContractError("/out/models/result.yaml has neither model_stages nor model")
    if not stages:
        raise ContractError("/out/models/result.yaml lists no model stage")
    evaluate = raw.get("evaluate_config") if isinstance(raw.get("evaluate_config"), dict) else {}
    protocol = "1.1" if isinstance(raw.get("model_stages"), dict) else "1.0"
    return {"best_stage": best, "stages": stages, "evaluate_config": evaluate, "protocol": protocol}


def read_mining_result(out_dir: Path, known: dict[str, str]) -> list[tuple[str, float]]:
    """``/out/result.tsv`` as (asset sha1, score), highest first. ``known`` maps the container paths of the
    candidate index (and their base names) to sha1; lines naming anything else are ignored."""
    text = _read_text(out_dir / "result.tsv", "/out/result.tsv")
    scores: dict[str, float] = {}
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        path, _sep, score_text = line.rpartition("\t")
        try:
            score = float(score_text)
        except ValueError:
            bad += 1
            continue
        sha1 = known.get(path.strip()) or known.get(PurePosixPath(path.strip()).name)
        if sha1 is None or not math.isfinite(score):
            bad += 1
            continue
        scores[sha1] = max(score, scores.get(sha1, -math.inf))
    if not scores:
        raise ContractError(f"/out/result.tsv names no candidate image ({bad} unusable lines)")
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def read_infer_result(out_dir: Path, known: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """``/out/infer-result.json`` (``boxes``, or protocol 1.0's ``annotations``) as sha1 → boxes
    ``{"class_name", "score", "x1", "y1", "x2", "y2"}``."""
    text = _read_text(out_dir / "infer-result.json", "/out/infer-result.json")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"/out/infer-result.json is not JSON: {exc}") from None
    detection = raw.get("detection") if isinstance(raw, dict) else None
    if not isinstance(detection, dict):
        raise ContractError("/out/infer-result.json has no 'detection' mapping")
    result: dict[str, list[dict[str, Any]]] = {}
    for name, entry in detection.items():
        sha1 = known.get(str(name)) or known.get(PurePosixPath(str(name)).name)
        if sha1 is None or not isinstance(entry, dict):
            continue
        boxes = entry.get("boxes", entry.get("annotations", []))
        kept = []
        for item in boxes if isinstance(boxes, list) else []:
            try:
                box = item["box"]
                x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
                score = float(item.get("score", 1.0))
                class_name = str(item["class_name"])
            except (KeyError, TypeError, ValueError):
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h, score)) or w <= 0 or h <= 0:
                continue
            kept.append({"class_name": class_name, "score": score, "x1": x, "y1": y, "x2": x + w, "y2": y + h})
        result[sha1] = kept
    return result
