"""Check that a stage's ONNX graph and its PyTorch weights give the same detections on some images.

    python -m ymir_detector.agree MODEL_DIR IMAGE [IMAGE ...]

prints a JSON object: the largest score and box differences among the detections scoring over 0.05."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ymir_detector.data import letterbox, to_tensor
from ymir_detector.infer import session
from ymir_detector.model import Decode, Detector
from ymir_detector.train import load_checkpoint


def compare(model_dir: Path, images: list[str]) -> dict[str, float]:
    checkpoint = load_checkpoint([str(model_dir / "model.pt")])
    assert checkpoint is not None
    model = Detector.from_checkpoint(checkpoint)
    decoder = Decode(model.eval())
    sess, _names, size = session([str(model_dir / "model.onnx")], use_gpu=False)
    batch = np.stack([letterbox(path, size)[0] for path in images])
    with torch.no_grad():
        boxes, scores, classes = (t.numpy() for t in decoder(to_tensor(batch)))
    onnx_boxes, onnx_scores, onnx_classes = sess.run(None, {"images": to_tensor(batch).numpy()})
    keep = scores > 0.05
    return {
        "detections": int(keep.sum()),
        "score_diff": float(np.abs(scores - onnx_scores)[keep].max(initial=0.0)),
        "box_diff": float(np.abs(boxes - onnx_boxes)[keep].max(initial=0.0)),
        "class_mismatch": int((classes != onnx_classes)[keep].sum()),
    }


if __name__ == "__main__":
    print(json.dumps(compare(Path(sys.argv[1]), sys.argv[2:])))
