"""One-image predictions with onnxruntime, the path "try a model" and deployment share.

A graph the platform can serve follows the built-in detector's convention: input ``images`` float32
[B, 3, S, S] in 0..1, each image scaled (bilinear) so that its longest side is S and pasted top-left on a
grey (114) square; outputs boxes [B, K, 4] (x1, y1, x2, y2 in input pixels), scores [B, K] and class indices [B, K],
decoded inside the graph (no NMS step); metadata ``class_names`` (JSON list) and ``image_size``.

Sessions are loaded once per process and reused (keyed by file and modification time); the CUDA provider is
used where onnxruntime has it.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 40_000_000
_CACHE_SIZE = 8
_lock = threading.Lock()
_sessions: OrderedDict[tuple[str, float], Loaded] = OrderedDict()


class PredictError(Exception):
    """The image or the model cannot be used; the message says why (``code``: unloadable, convention, image)."""

    def __init__(self, message: str, code: str = "convention") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Loaded:
    session: Any
    class_names: list[str]
    image_size: int
    input_name: str
    providers: list[str]


def load(path: Path) -> Loaded:
    import onnxruntime as ort

    key = (str(path), path.stat().st_mtime)
    with _lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for bad graphs
        raise PredictError(f"cannot load {path.name}: {exc}", "unloadable") from None
    meta = session.get_modelmeta().custom_metadata_map
    try:
        names = [str(n) for n in json.loads(meta["class_names"])]
        size = int(meta["image_size"])
    except (KeyError, ValueError, TypeError):
        raise PredictError(f"{path.name} lacks the class_names / image_size metadata this platform serves") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(session.get_outputs()) != 3:
        raise PredictError(f"{path.name} is not a decoded detector graph (one input, boxes/scores/classes)")
    loaded = Loaded(session, names, size, inputs[0].name, session.get_providers())
    with _lock:
        _sessions[key] = loaded
        while len(_sessions) > _CACHE_SIZE:
            _sessions.popitem(last=False)
    return loaded


def decode_image(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise PredictError(f"the image is too large ({opened.width}x{opened.height})", "image")
            return opened.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise PredictError(f"the image is too large ({exc})", "image") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PredictError(f"not an image: {exc}", "image") from None


def predict(
    path: Path, images: list[Image.Image], *, score_threshold: float = 0.25, max_boxes: int = 100
) -> tuple[list[list[dict[str, Any]]], float]:
    """Boxes per image (pixels of the original image, class name, score), and the seconds the graph took."""
    model = load(path)
    size = model.image_size
    batch = np.full((len(images), size, size, 3), 114, np.uint8)
    scales = []
    for i, image in enumerate(images):
        scale = size / max(image.width, image.height)
        resized = image.resize(  # bilinear, as the detector letterboxes in training and in its own inference
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
        )
        batch[i, : resized.height, : resized.width] = np.asarray(resized)
        scales.append(scale)
    tensor = batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    started = time.perf_counter()
    boxes, scores, classes = model.session.run(None, {model.input_name: tensor})
    seconds = time.perf_counter() - started
    out = []
    for i, image in enumerate(images):
        found: list[dict[str, Any]] = []
        for box, score, cls in zip(boxes[i], scores[i], classes[i], strict=True):
            if score < score_threshold or len(found) >= max_boxes or not 0 <= int(cls) < len(model.class_names):
                continue
            x1, y1, x2, y2 = (float(v) / scales[i] for v in box)
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(image.width), x2), min(float(image.height), y2)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            found.append(
                {
                    "x1": round(x1, 1),
                    "y1": round(y1, 1),
                    "x2": round(x2, 1),
                    "y2": round(y2, 1),
                    "class_name": model.class_names[int(cls)],
                    "score": round(float(score), 4),
                }
            )
        out.append(found)
    return out, seconds


def preview(image: Image.Image, boxes: list[dict[str, Any]], longest: int = 1024) -> dict[str, Any]:
    """The image scaled down for a page (a JPEG data URL) and the boxes scaled with it (sx, sy, sw, sh)."""
    import base64

    shown = image.copy()
    shown.thumbnail((longest, longest))
    factor = shown.width / image.width
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=85)
    scaled = []
    for box in boxes:
        scaled.append(
            {
                **box,
                "sx": box["x1"] * factor,
                "sy": box["y1"] * factor,
                "sw": (box["x2"] - box["x1"]) * factor,
                "sh": (box["y2"] - box["y1"]) * factor,
            }
        )
    return {
        "boxes": scaled,
        "width": shown.width,
        "height": shown.height,
        "data_url": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
    }
