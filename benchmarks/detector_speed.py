"""The built-in detector: seconds per epoch, mAP on held-out images, and inference throughput.

Run with the detector's own environment (it needs torch), from the repository root:
    .venv-detector/bin/python benchmarks/detector_speed.py [--train 300] [--val 60] [--epochs 30] [--gpu]

Data: synthetic Lego-like images (320x240, the demo generator). Baselines in the same run: with --gpu the CPU
epoch time on the same machine; inference is reported as ONNX Runtime (CPU) at batch 8 against the same
model's PyTorch eager forward at batch 8 on the same CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "executors")]

from datasets.demo import CLASSES, make_image  # noqa: E402


def folder(root: Path, train: int, val: int) -> None:
    inp, out = root / "in", root / "out"
    for path in (inp / "assets", inp / "annotations", out):
        path.mkdir(parents=True, exist_ok=True)

    def index(name: str, start: int, count: int) -> None:
        lines = []
        for i in range(start, start + count):
            data, boxes = make_image(2024, i, 320, 240)
            image, annotation = inp / "assets" / f"{i}.jpg", inp / "annotations" / f"{i}.txt"
            image.write_bytes(data)
            annotation.write_text("".join(f"{CLASSES.index(b.label)}, {b.x1}, {b.y1}, {b.x2}, {b.y2}\n" for b in boxes))
            lines.append(f"{image}\t{annotation}\n")
        (inp / name).write_text("".join(lines))

    index("train-index.tsv", 0, train)
    index("val-index.tsv", train, val)


def train(root: Path, epochs: int, size: int, gpus: int, model_size: str, tag: str) -> dict:
    inp, out = root / "in", root / tag
    for sub in ("models", "tensorboard"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    config = {
        "class_names": list(CLASSES),
        "epochs": epochs,
        "image_size": size,
        "batch_size": 16,
        "save_every_epochs": epochs,
        "model_size": model_size,
        "gpu_count": gpus,
        "export_format": "ark:raw",
        "task_id": tag,
    }
    (inp / f"config-{tag}.yaml").write_text(yaml.safe_dump(config))
    env = {
        "task_id": tag,
        "run_training": True,
        "run_mining": False,
        "run_infer": False,
        "input": {
            "training_index_file": str(inp / "train-index.tsv"),
            "val_index_file": str(inp / "val-index.tsv"),
            "config_file": str(inp / f"config-{tag}.yaml"),
        },
        "output": {
            "models_dir": str(out / "models"),
            "tensorboard_dir": str(out / "tensorboard"),
            "training_result_file": str(out / "models" / "result.yaml"),
            "monitor_file": str(out / "monitor.txt"),
        },
    }
    (inp / f"env-{tag}.yaml").write_text(yaml.safe_dump(env))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ymir_detector"],
        cwd=ROOT / "executors",
        env={**os.environ, "YMIR_ENV_FILE": str(inp / f"env-{tag}.yaml")},
        check=True,
    )
    wall = time.perf_counter() - started
    stage = yaml.safe_load((out / "models" / "result.yaml").read_text())["model_stages"]["best"]
    return {
        "wall_s": wall,
        "s_per_epoch": stage["seconds"] / epochs,
        "mAP50": stage["mAP"],
        "mAP50_95": stage["mAP50_95"],
        "dir": out / "models" / "best",
    }


def throughput(model_dir: Path, images: list[str]) -> dict:
    import torch
    from ymir_detector.data import letterbox, to_tensor
    from ymir_detector.infer import session
    from ymir_detector.model import Decode, Detector
    from ymir_detector.train import load_checkpoint

    sess, _names, size = session([str(model_dir / "model.onnx")], use_gpu=False)
    batch = np.stack([letterbox(p, size)[0] for p in images[:8]])
    tensor = to_tensor(batch)
    feed = {"images": tensor.numpy()}
    ckpt = load_checkpoint([str(model_dir / "model.pt")])
    assert ckpt is not None
    decoder = Decode(Detector.from_checkpoint(ckpt).eval())

    def rate(fn: Any) -> float:
        for _ in range(3):
            fn()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 3.0:
            fn()
            runs += 1
        return runs * 8 / (time.perf_counter() - started)

    with torch.no_grad():
        eager = rate(lambda: decoder(tensor))
    ort = rate(lambda: sess.run(None, feed))
    return {"ort_images_per_s": ort, "eager_images_per_s": eager, "ratio": ort / eager}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model-size", default="s")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--cpu-epochs", type=int, default=2, help="with --gpu: epochs of the CPU baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder(root, args.train, args.val)
        figures = {}
        if args.gpu:
            figures["gpu"] = train(root, args.epochs, args.size, 1, args.model_size, "gpu")
            figures["cpu"] = train(root, args.cpu_epochs, args.size, 0, args.model_size, "cpu")
        else:
            figures["cpu"] = train(root, args.epochs, args.size, 0, args.model_size, "cpu")
        best = figures["gpu" if args.gpu else "cpu"]
        images = sorted(str(p) for p in (root / "in" / "assets").glob("*.jpg"))[-args.val :]
        speed = throughput(best["dir"], images)
    setting = f"{args.size} px, model {args.model_size}, {args.epochs} epochs"
    print(f"\n{args.train} training / {args.val} held-out images at {setting}")
    for name, f in figures.items():
        line = f"{f['s_per_epoch']:.2f} s/epoch, wall {f['wall_s']:.0f} s"
        print(f"  {name}: {line}, mAP50 {f['mAP50']:.3f}, mAP50-95 {f['mAP50_95']:.3f}")
    if args.gpu:
        ratio = figures["cpu"]["s_per_epoch"] / figures["gpu"]["s_per_epoch"]
        print(f"  GPU epoch vs CPU epoch (same machine): {ratio:.1f}x faster")
    print(
        f"  inference batch 8 (CPU): ONNX Runtime {speed['ort_images_per_s']:.0f} img/s, PyTorch eager "
        f"{speed['eager_images_per_s']:.0f} img/s, ratio {speed['ratio']:.2f}x"
    )
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "dir"} for k, v in figures.items()} | {"inference": speed}
        )
    )


if __name__ == "__main__":
    main()
