"""The built-in detector (CPU configuration) side by side with Ultralytics YOLO11n built from its yaml (no
weights), on the same synthetic images, for the same wall-clock training budget, in the same run, both
evaluated by the platform's evaluator on the same held-out images; and ONNX Runtime throughput at batch 8,
taken in turns (ours: the graph decodes inside; YOLO11n: its exported graph plus NMS).

Ultralytics is AGPL-3.0 and pulls torchvision, so it lives only in a benchmark-only environment, never in the
platform or the executor: Ultralytics installed with ``--no-deps`` beside the CPU torch wheel, its plain
dependencies, onnx + onnxruntime, and a stand-in ``torchvision`` package providing ``ops.nms`` (the real one
does not install beside this torch; ``benchmarks/torchvision_standin``). ``bash benchmarks/yolo_env.sh`` makes
that environment and prints the command to run; our detector trains in its own environment
(``.venv-detector``) through the executor contract. Options: ``--train 300 --val 60 --size 256 --epochs 30``
(YOLO11n gets the wall time our epochs took).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datasets.demo import CLASSES, make_image  # noqa: E402
from models_app.evaluator import Boxes, evaluate  # noqa: E402

DETECTOR_PYTHON = ROOT / ".venv-detector" / "bin" / "python"


def write_data(root: Path, train: int, val: int) -> tuple[list[Path], list[list]]:
    """Both layouts: YOLO (images/, labels/) and the contract's (index files with ark annotations)."""
    held_out, truth = [], []
    for split, start, count in (("train", 0, train), ("val", train, val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        (root / "ark").mkdir(exist_ok=True)
        lines = []
        for i in range(start, start + count):
            data, boxes = make_image(2024, i, 320, 240)
            image = root / "images" / split / f"{i}.jpg"
            image.write_bytes(data)
            yolo = "".join(
                f"{CLASSES.index(b.label)} {(b.x1 + b.x2) / 640:.6f} {(b.y1 + b.y2) / 480:.6f} "
                f"{(b.x2 - b.x1) / 320:.6f} {(b.y2 - b.y1) / 240:.6f}\n"
                for b in boxes
            )
            (root / "labels" / split / f"{i}.txt").write_text(yolo)
            ark = root / "ark" / f"{i}.txt"
            ark.write_text("".join(f"{CLASSES.index(b.label)}, {b.x1}, {b.y1}, {b.x2}, {b.y2}\n" for b in boxes))
            lines.append(f"{image}\t{ark}\n")
            if split == "val":
                held_out.append(image)
                truth.append([(CLASSES.index(b.label), b.x1, b.y1, b.x2, b.y2) for b in boxes])
        (root / f"{split}-index.tsv").write_text("".join(lines))
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": list(CLASSES)})
    )
    return held_out, truth


def train_ours(root: Path, size: int, budget_s: float, epochs: int, head: str = "separable") -> dict:
    out = root / f"ours-{head}"
    for sub in ("models", "tensorboard"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    config = {
        "class_names": list(CLASSES),
        "epochs": epochs,
        "image_size": size,
        "batch_size": 16,
        "save_every_epochs": epochs,
        "export_format": "ark:raw",
        "model_head": head,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        "task_id": "ours",
        "run_training": True,
        "input": {
            "training_index_file": str(root / "train-index.tsv"),
            "val_index_file": str(root / "val-index.tsv"),
            "config_file": str(root / "config.yaml"),
        },
        "output": {
            "models_dir": str(out / "models"),
            "tensorboard_dir": str(out / "tensorboard"),
            "training_result_file": str(out / "models" / "result.yaml"),
            "monitor_file": str(out / "monitor.txt"),
        },
    }
    (root / "env.yaml").write_text(yaml.safe_dump(env))
    started = time.perf_counter()
    subprocess.run(
        [str(DETECTOR_PYTHON), "-m", "ymir_detector"],
        cwd=ROOT / "executors",
        env={**os.environ, "YMIR_ENV_FILE": str(root / "env.yaml"), "PYTHONPATH": ""},
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=budget_s * 3,
    )
    wall = time.perf_counter() - started
    stage = yaml.safe_load((out / "models" / "result.yaml").read_text())["model_stages"]["best"]
    return {
        "wall_s": wall,
        "epochs": epochs,
        "s_per_epoch": stage["seconds"] / epochs,
        "onnx": out / "models" / "best" / "model.onnx",
    }


def train_yolo(root: Path, size: int, budget_s: float) -> dict:
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")
    started = time.perf_counter()
    model.train(
        data=str(root / "data.yaml"),
        imgsz=size,
        epochs=1000,
        time=budget_s / 3600,  # Ultralytics stops at this many hours
        batch=16,
        device="cpu",
        workers=2,
        amp=False,
        plots=False,
        val=False,
        pretrained=False,
        project=str(root / "yolo"),
        name="run",
        verbose=False,
        seed=0,
    )
    wall = time.perf_counter() - started
    epochs = int(model.trainer.epoch) + 1
    weights = root / "yolo" / "run" / "weights" / "last.pt"
    trained = YOLO(str(weights))
    onnx = Path(trained.export(format="onnx", imgsz=size, simplify=False, dynamic=True, opset=17))
    return {"wall_s": wall, "epochs": epochs, "s_per_epoch": wall / epochs, "onnx": onnx, "model": trained}


def letterbox(path: Path, size: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = size / max(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)))
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.height, : resized.width] = np.asarray(resized)
    return canvas, scale


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return keep


def yolo_decode(raw: np.ndarray, conf: float, max_det: int = 100) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """YOLO11's raw head [B, 4 + C, N] → per image (xyxy, score, class) after class-aware NMS (0.7 IoU)."""
    out = []
    for pred in raw:
        pred = pred.T
        scores = pred[:, 4:].max(1)
        classes = pred[:, 4:].argmax(1)
        keep = scores > conf
        xywh, scores, classes = pred[keep, :4], scores[keep], classes[keep]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        offset = xyxy + classes[:, None] * 4096.0
        kept = nms_numpy(offset, scores, 0.7)[:max_det]
        out.append((xyxy[kept], scores[kept], classes[kept]))
    return out


def predictions(
    kind: str, onnx: Path, images: list[Path], size: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), 8):
        loaded = [letterbox(p, size) for p in images[start : start + 8]]
        batch = np.stack([c for c, _s in loaded]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        if kind == "ours":
            boxes, scores, classes = session.run(None, {name: batch})
            found = [(boxes[i], scores[i], classes[i]) for i in range(len(loaded))]
        else:
            found = yolo_decode(session.run(None, {name: batch})[0], conf=0.001)
        for (_canvas, scale), (b, s, c) in zip(loaded, found, strict=True):
            out.append((np.asarray(b, np.float64) / scale, np.asarray(s, np.float64), np.asarray(c, np.int64)))
    return out


def throughputs(runs: dict[str, tuple[str, Path]], images: list[Path], size: int, rounds: int = 5) -> dict[str, float]:
    """Images per second at batch 8 for each graph: blocks of 2 s taken in turn, ``rounds`` times, the median
    per graph (a shared machine's drift falls on all of them alike)."""
    import onnxruntime as ort

    batch = np.stack([letterbox(p, size)[0] for p in images[:8]]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    calls = {}
    for name, (kind, onnx) in runs.items():
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: batch}

        def once(session: Any = session, feed: dict = feed, kind: str = kind) -> None:
            result = session.run(None, feed)
            if kind == "yolo":
                yolo_decode(result[0], conf=0.25)

        for _ in range(3):
            once()
        calls[name] = once
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, once in calls.items():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < 2.0:
                once()
                count += 1
            rates[name].append(count * 8 / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def score(preds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], truth: list[list]) -> dict[str, float]:
    gi = [i for i, boxes in enumerate(truth) for _ in boxes]
    gl = [b[0] for boxes in truth for b in boxes]
    gb = [[b[1], b[2], b[3] - b[1], b[4] - b[2]] for boxes in truth for b in boxes]
    di, dl, db, ds = [], [], [], []
    for i, (boxes, scores, classes) in enumerate(preds):
        for box, s, c in zip(boxes, scores, classes, strict=True):
            di.append(i)
            dl.append(int(c))
            db.append([box[0], box[1], box[2] - box[0], box[3] - box[1]])
            ds.append(float(s))
    ev = evaluate(
        Boxes(np.array(gi), np.array(gl), np.array(gb).reshape(-1, 4)),
        Boxes(np.array(di), np.array(dl), np.array(db).reshape(-1, 4), np.array(ds)),
        n_classes=len(CLASSES),
    )
    return {"mAP50": ev.stats["AP50"], "mAP50_95": ev.stats["AP"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=40, help="our epochs; YOLO11n gets the wall time they took")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        held_out, truth = write_data(root, args.train, args.val)
        ours = train_ours(root, args.size, 3600.0, args.epochs)
        print(f"ours: {ours['epochs']} epochs in {ours['wall_s']:.0f} s", flush=True)
        yolo = train_yolo(root, args.size, ours["wall_s"])
        print(f"yolo11n: {yolo['epochs']} epochs in {yolo['wall_s']:.0f} s", flush=True)
        rates = throughputs({"ours": ("ours", ours["onnx"]), "yolo11n": ("yolo", yolo["onnx"])}, held_out, args.size)
        results = {}
        for name, run in (("ours", ours), ("yolo11n", yolo)):
            kind = "ours" if name == "ours" else "yolo"
            results[name] = {
                **score(predictions(kind, run["onnx"], held_out, args.size), truth),
                "images_per_s": rates[name],
                "epochs": run["epochs"],
                "s_per_epoch": run["s_per_epoch"],
                "wall_s": run["wall_s"],
            }
    o, y = results["ours"], results["yolo11n"]
    print(f"\n{args.train} training / {args.val} held-out images at {args.size} px, same wall-clock budget, CPU")
    print("| detector | epochs | s/epoch | mAP50 | mAP50-95 | ONNX Runtime img/s (batch 8) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['epochs']} | {r['s_per_epoch']:.1f} | {r['mAP50']:.3f} | {r['mAP50_95']:.3f} | "
            f"{r['images_per_s']:.0f} |"
        )
    print(
        f"ours / yolo11n: mAP50 {o['mAP50'] / max(y['mAP50'], 1e-9):.2f}x (target >= 1), mAP50-95 "
        f"{o['mAP50_95'] / max(y['mAP50_95'], 1e-9):.2f}x (target >= 0.9), throughput "
        f"{o['images_per_s'] / y['images_per_s']:.2f}x (target >= 1.3)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
