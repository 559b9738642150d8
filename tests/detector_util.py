"""Helpers for the default detector's tests: its environment, and a task folder made by hand (no platform)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings

from datasets.demo import CLASSES, make_image
from tests.conftest import require
from tests.executors_util import bwrap_or_skip


def detector_python() -> str:
    python = settings.YMIR_DETECTOR_PYTHON
    if not python or not Path(python).exists():
        require("YMIR_REQUIRE_DETECTOR", "the default detector's environment is not built (./ymir.sh test builds it)")
    bwrap_or_skip()
    return str(python)


def task_folder(root: Path, train: int, val: int, seed: int = 99, empty_annotations: bool = False) -> Path:
    """A contract folder with ``in/`` (synthetic images, ark annotations, indexes, env.yaml) and ``out/``."""
    inp, out = root / "in", root / "out"
    for folder in (inp / "assets", inp / "annotations", out / "models", out / "tensorboard"):
        folder.mkdir(parents=True, exist_ok=True)

    def index(name: str, start: int, count: int) -> None:
        lines = []
        for i in range(start, start + count):
            data, boxes = make_image(seed, i, 320, 240)
            image, annotation = inp / "assets" / f"{i}.jpg", inp / "annotations" / f"{i}.txt"
            image.write_bytes(data)
            rows = [f"{CLASSES.index(b.label)}, {b.x1}, {b.y1}, {b.x2}, {b.y2}\n" for b in boxes]
            annotation.write_text("" if empty_annotations else "".join(rows))
            lines.append(f"{image}\t{annotation}\n")
        (inp / name).write_text("".join(lines))

    index("train-index.tsv", 0, train)
    index("val-index.tsv", train, val)
    candidates = [line.split("\t")[0] + "\n" for line in (inp / "val-index.tsv").read_text().splitlines()]
    (inp / "candidate-index.tsv").write_text("".join(candidates))
    return root


def run_direct(
    root: Path, task: str, config: dict[str, Any], env_extra: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the detector on a hand-made folder (paths in env.yaml point into it): exit code, monitor.txt, log."""
    inp, out = root / "in", root / "out"
    env = {
        "protocol_version": "1.1.0",
        "task_id": "t1",
        "run_training": task == "training",
        "run_mining": task == "mining",
        "run_infer": task == "infer",
        "input": {
            "root_dir": str(inp),
            "assets_dir": str(inp / "assets"),
            "annotations_dir": str(inp / "annotations"),
            "models_dir": str(inp / "models"),
            "training_index_file": str(inp / "train-index.tsv"),
            "val_index_file": str(inp / "val-index.tsv"),
            "candidate_index_file": str(inp / "candidate-index.tsv"),
            "config_file": str(inp / f"config-{task}.yaml"),
        },
        "output": {
            "root_dir": str(out),
            "models_dir": str(out / "models"),
            "tensorboard_dir": str(out / "tensorboard"),
            "training_result_file": str(out / "models" / "result.yaml"),
            "mining_result_file": str(out / "result.tsv"),
            "infer_result_file": str(out / "infer-result.json"),
            "monitor_file": str(out / "monitor.txt"),
        },
    }
    (inp / f"env-{task}.yaml").write_text(yaml.safe_dump(env))
    full = {"class_names": list(CLASSES), "gpu_count": 0, "task_id": "t1", "export_format": "ark:raw", **config}
    (inp / f"config-{task}.yaml").write_text(yaml.safe_dump(full))
    done = subprocess.run(
        [detector_python(), "-m", "ymir_detector"],
        cwd=settings.YMIR_DETECTOR_FOLDER,
        env={
            "YMIR_ENV_FILE": str(inp / f"env-{task}.yaml"),
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "2",
            **(env_extra or {}),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    monitor = (out / "monitor.txt").read_text() if (out / "monitor.txt").exists() else ""
    return done.returncode, monitor, done.stdout + done.stderr
