"""The executor's side of the contract: read /in/env.yaml and config.yaml, the index files and annotations;
write monitor.txt, result.yaml, result.tsv and infer-result.json."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ENV_FILE = os.environ.get("YMIR_ENV_FILE", "/in/env.yaml")


class ExecutorError(Exception):
    """Ends the run with a YMIR error code in monitor.txt: 300001 config, 300002 data, 300003 model,
    300004 dataset unusable, 300102 out of GPU memory, 300201 NaN loss."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Env:
    task_id: str
    run_training: bool
    run_mining: bool
    run_infer: bool
    input: dict[str, str]
    output: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.config.get("class_names") or []]


def load_env(path: str = ENV_FILE) -> Env:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        config = yaml.safe_load(Path(raw["input"]["config_file"]).read_text()) or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ExecutorError("300001", f"cannot read env.yaml / config.yaml: {exc}") from None
    if not isinstance(config, dict):
        raise ExecutorError("300001", "config.yaml is not a mapping")
    return Env(
        task_id=str(raw.get("task_id", "")),
        run_training=bool(raw.get("run_training")),
        run_mining=bool(raw.get("run_mining")),
        run_infer=bool(raw.get("run_infer")),
        input=dict(raw.get("input") or {}),
        output=dict(raw.get("output") or {}),
        config=config,
    )


class Monitor:
    """Progress in /out/monitor.txt (rewritten whole on each report), at most every ``every`` seconds."""

    def __init__(self, env: Env, every: float = 1.0) -> None:
        self.path = Path(env.output.get("monitor_file", "/out/monitor.txt"))
        self.task_id = env.task_id
        self.every = every
        self.last = 0.0

    def _write(self, percent: float, state: int, extra: str = "") -> None:
        line = f"{self.task_id}\t{time.time():.3f}\t{max(0.0, min(1.0, percent)):.4f}\t{state}{extra}\n"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(line)
        tmp.replace(self.path)

    def progress(self, percent: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self._write(percent, 2)

    def done(self) -> None:
        self._write(1.0, 3)

    def error(self, code: str, message: str) -> None:
        self._write(1.0, 4, "\t" + code + "\t" + " ".join(message.split())[:500])


# --- inputs ------------------------------------------------------------------------------------------------


@dataclass
class Item:
    image: str
    boxes: np.ndarray  # float32 [N, 4] x1 y1 x2 y2 in pixels
    labels: np.ndarray  # int64 [N], indexes into class_names


def export_format(config: dict[str, Any]) -> str:
    value = str(config.get("export_format") or "voc:raw").lower()
    anno = value.split(":", 1)[0]
    return {"det-ark": "ark", "det-voc": "voc", "seg-coco": "coco"}.get(anno, anno)


def read_index(path: str, annotated: bool, class_names: list[str], fmt: str) -> list[Item]:
    """The items of a train/val index (image TAB annotation) or a candidate index (image)."""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ExecutorError("300002", f"cannot read the index {path}: {exc}") from None
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    if not annotated:
        return [Item(line.split("\t")[0], *empty) for line in lines]
    coco = _coco(path, class_names) if fmt == "coco" else None
    items = []
    for line in lines:
        image, _sep, annotation = line.partition("\t")
        if coco is not None:
            boxes, labels = coco.get(Path(image).name, empty)
        elif fmt == "ark":
            boxes, labels = _ark(annotation, len(class_names))
        elif fmt == "voc":
            boxes, labels = _voc(annotation, class_names)
        else:
            raise ExecutorError("300001", f"training needs annotations; export_format {fmt!r} gives none")
        items.append(Item(image, boxes, labels))
    return items


def _ark(path: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, labels = [], []
    text = Path(path).read_text() if path and Path(path).is_file() else ""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            label, x1, y1, x2, y2 = int(parts[0]), *(float(p) for p in parts[1:5])
        except ValueError:
            raise ExecutorError("300002", f"bad annotation line in {path}: {line!r}") from None
        if not all(np.isfinite((x1, y1, x2, y2))):
            raise ExecutorError("300002", f"non-numeric box in {path}: {line!r}")
        if not 0 <= label < classes:
            raise ExecutorError("300002", f"class index {label} in {path} is not in class_names")
        boxes.append((x1, y1, x2, y2))
        labels.append(label)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _voc(path: str, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {name.lower(): i for i, name in enumerate(class_names)}
    boxes, labels = [], []
    if path and Path(path).is_file():
        try:
            root = ET.parse(path).getroot()  # noqa: S314 (the platform wrote it)
        except ET.ParseError as exc:
            raise ExecutorError("300002", f"bad VOC annotation {path}: {exc}") from None
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip().lower()
            box = obj.find("bndbox")
            if name not in index or box is None:
                continue
            boxes.append(tuple(float(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax")))
            labels.append(index[name])
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _coco(index_path: str, class_names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = Path(index_path).parent / "annotations"
    try:
        data = json.loads((folder / "coco-annotations.json").read_text())
    except (OSError, ValueError) as exc:
        raise ExecutorError("300002", f"cannot read coco-annotations.json: {exc}") from None
    wanted = {name.lower(): i for i, name in enumerate(class_names)}
    category = {c["id"]: wanted.get(str(c["name"]).lower()) for c in data.get("categories", [])}
    names = {img["id"]: Path(img["file_name"]).name for img in data.get("images", [])}
    found: dict[str, tuple[list[Any], list[int]]] = {}
    for ann in data.get("annotations", []):
        label = category.get(ann.get("category_id"))
        if label is None or ann.get("image_id") not in names:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes, labels = found.setdefault(names[ann["image_id"]], ([], []))
        boxes.append((x, y, x + w, y + h))
        labels.append(label)
    return {
        name: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64)) for name, (b, lab) in found.items()
    }


# --- outputs -----------------------------------------------------------------------------------------------


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases: some readers of result.yaml do not follow them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_training_result(env: Env, stages: dict[str, dict[str, Any]], best: str) -> None:
    path = Path(env.output.get("training_result_file", "/out/models/result.yaml"))
    result = {
        "best_stage_name": best,
        "model_stages": stages,
        "evaluate_config": {"conf_thr": 0.005, "iou_thr": 0.5},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.dump(result, Dumper=_PlainDumper, sort_keys=False))
    tmp.replace(path)


def write_mining_result(env: Env, scores: list[tuple[str, float]]) -> None:
    path = Path(env.output.get("mining_result_file", "/out/result.tsv"))
    ordered = sorted(scores, key=lambda item: -item[1])
    path.write_text("".join(f"{image}\t{score:.6f}\n" for image, score in ordered))


def write_infer_result(env: Env, detections: dict[str, list[dict[str, Any]]]) -> None:
    path = Path(env.output.get("infer_result_file", "/out/infer-result.json"))
    path.write_text(json.dumps({"detection": {Path(k).name: {"boxes": v} for k, v in detections.items()}}))
