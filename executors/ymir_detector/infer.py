"""Inference with onnxruntime (the CUDA provider when the run has a GPU) on the exported graph, batched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ymir_detector import contract
from ymir_detector.contract import Env, ExecutorError, Monitor
from ymir_detector.data import letterbox

DEFAULTS = {"conf_threshold": 0.05, "batch_size": 8, "max_detections": 100}


def session(paths: list[str], use_gpu: bool):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    onnx_files = [p for p in paths if p.endswith(".onnx") and Path(p).is_file()]
    if not onnx_files:
        raise ExecutorError("300003", "model_params_path holds no model.onnx")
    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        sess = ort.InferenceSession(onnx_files[0], providers=providers)
    except Exception as exc:
        raise ExecutorError("300003", f"cannot load {onnx_files[0]}: {exc}") from None
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        names = json.loads(meta["class_names"])
        size = int(meta["image_size"])
    except (KeyError, ValueError):
        raise ExecutorError("300003", f"{onnx_files[0]} is not a model of this executor") from None
    return sess, names, size


def run(env: Env, monitor: Monitor, progress: tuple[float, float] = (0.0, 1.0)) -> None:
    opts = {**DEFAULTS, **{k: env.config[k] for k in DEFAULTS if env.config.get(k) is not None}}
    if not (isinstance(opts["conf_threshold"], int | float) and 0 <= opts["conf_threshold"] < 1):
        raise ExecutorError("300001", f"invalid conf_threshold: {opts['conf_threshold']!r}")
    if not (isinstance(opts["batch_size"], int) and opts["batch_size"] >= 1):
        raise ExecutorError("300001", f"invalid batch_size: {opts['batch_size']!r}")
    sess, names, size = session(
        [str(p) for p in env.config.get("model_params_path") or []], int(env.config.get("gpu_count") or 0) > 0
    )
    wanted = {n.lower() for n in env.class_names} or {n.lower() for n in names}
    items = contract.read_index(env.input["candidate_index_file"], False, env.class_names, "none")
    results: dict[str, list[dict[str, Any]]] = {}
    batch = int(opts["batch_size"])
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        loaded = [letterbox(item.image, size) for item in chunk]
        images = np.stack([img for img, _s, _o in loaded]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        boxes, scores, classes = sess.run(None, {"images": images})
        for i, item in enumerate(chunk):
            _img, scale, (width, height) = loaded[i]
            found: list[dict[str, Any]] = []
            for box, score, cls in zip(boxes[i], scores[i], classes[i], strict=True):
                if score < opts["conf_threshold"] or len(found) >= opts["max_detections"]:
                    continue
                name = names[int(cls)]
                if name.lower() not in wanted:
                    continue
                x1, y1, x2, y2 = (float(v) / scale for v in box)
                x1, y1 = max(0.0, x1), max(0.0, y1)
                x2, y2 = min(float(width), x2), min(float(height), y2)
                if x2 - x1 < 1 or y2 - y1 < 1:
                    continue
                found.append(
                    {
                        "box": {"x": round(x1, 2), "y": round(y1, 2), "w": round(x2 - x1, 2), "h": round(y2 - y1, 2)},
                        "class_name": name,
                        "score": round(float(score), 5),
                    }
                )
            results[item.image] = found
        monitor.progress(progress[0] + (progress[1] - progress[0]) * min(1.0, (start + batch) / len(items)))
    contract.write_infer_result(env, results)
