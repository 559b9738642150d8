"""Does mining pay? The built-in detector's strategies against random picking, on synthetic Lego-like data.

From ``--labelled`` labelled images a base model is trained; each strategy picks ``--add`` images from a
``--pool``-image pool (whose hidden ground truth is then "labelled"); the model is retrained on labelled +
picked, and its mAP50 on ``--held-out`` images is reported, with the boxes the picked images cost to label.
Each strategy runs with ``--seeds`` seeds (the retraining seed; for random also the pick). Random picking
is the baseline in the same run.

    .venv-detector/bin/python benchmarks/mining_strategies.py [--labelled 100 --pool 500 --add 50 --seeds 3]

mAP50 is the detector's own held-out evaluation of its best stage (COCO-style, 101 recall points).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "executors")]

from datasets.demo import CLASSES, make_image  # noqa: E402

STRATEGIES = ("random", "entropy", "margin", "aldd", "cald", "cost_aware")


def write_images(inp: Path, start: int, count: int) -> dict[str, tuple[str, int]]:
    """image path -> (annotation path, box count), for images ``start``..``start+count-1``."""
    out = {}
    for i in range(start, start + count):
        data, boxes = make_image(77, i, 320, 240)
        image, annotation = inp / "assets" / f"{i}.jpg", inp / "annotations" / f"{i}.txt"
        image.write_bytes(data)
        annotation.write_text("".join(f"{CLASSES.index(b.label)}, {b.x1}, {b.y1}, {b.x2}, {b.y2}\n" for b in boxes))
        out[str(image)] = (str(annotation), len(boxes))
    return out


def run(inp: Path, tag: str, env: dict, config: dict) -> Path:
    out = inp.parent / tag
    for sub in ("models", "tensorboard"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (inp / f"config-{tag}.yaml").write_text(yaml.safe_dump({"class_names": list(CLASSES), **config}))
    env = {
        "task_id": tag,
        **env,
        "input": {**env.get("input", {}), "config_file": str(inp / f"config-{tag}.yaml")},
        "output": {
            "models_dir": str(out / "models"),
            "tensorboard_dir": str(out / "tensorboard"),
            "training_result_file": str(out / "models" / "result.yaml"),
            "mining_result_file": str(out / "result.tsv"),
            "infer_result_file": str(out / "infer-result.json"),
            "monitor_file": str(out / "monitor.txt"),
        },
    }
    (inp / f"env-{tag}.yaml").write_text(yaml.safe_dump(env))
    subprocess.run(
        [sys.executable, "-m", "ymir_detector"],
        cwd=ROOT / "executors",
        env={**os.environ, "YMIR_ENV_FILE": str(inp / f"env-{tag}.yaml")},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def train(
    inp: Path, tag: str, items: dict[str, tuple[str, int]], val: Path, args: argparse.Namespace, seed: int
) -> tuple[float, Path]:
    index = inp / f"train-{tag}.tsv"
    index.write_text("".join(f"{image}\t{annotation}\n" for image, (annotation, _n) in items.items()))
    config = {
        "epochs": args.epochs,
        "image_size": args.size,
        "batch_size": 16,
        "save_every_epochs": args.epochs,
        "seed": seed,
        "export_format": "ark:raw",
    }
    env = {"run_training": True, "input": {"training_index_file": str(index), "val_index_file": str(val)}}
    out = run(inp, tag, env, config)
    stage = yaml.safe_load((out / "models" / "result.yaml").read_text())["model_stages"]["best"]
    return float(stage["mAP"]), out / "models" / "best"


def mine(inp: Path, tag: str, model: Path, pool: Path, strategy: str, seed: int) -> list[str]:
    config = {
        "strategy": strategy,
        "seed": seed,
        "model_params_path": [str(p) for p in sorted(model.iterdir())],
        "export_format": "ark:raw",
    }
    env = {"run_mining": True, "input": {"candidate_index_file": str(pool)}}
    out = run(inp, tag, env, config)
    ranked = [line.split("\t")[0] for line in (out / "result.tsv").read_text().splitlines() if line.strip()]
    return ranked


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--pool", type=int, default=500)
    parser.add_argument("--add", type=int, default=50)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        for sub in ("assets", "annotations"):
            (inp / sub).mkdir(parents=True)
        labelled = write_images(inp, 0, args.labelled)
        pool = write_images(inp, 10_000, args.pool)
        held = write_images(inp, 20_000, args.held_out)
        val = inp / "val.tsv"
        val.write_text("".join(f"{image}\t{annotation}\n" for image, (annotation, _n) in held.items()))
        pool_index = inp / "pool.tsv"
        pool_index.write_text("".join(f"{image}\n" for image in pool))
        base_map, base_model = train(inp, "base", labelled, val, args, 0)
        pool_boxes = statistics.mean(n for _a, n in pool.values())
        print(f"base model: {args.labelled} images, held-out mAP50 {base_map:.3f}; pool: {pool_boxes:.2f} boxes/image")
        rows = {}
        for strategy in args.strategies:
            maps, costs = [], []
            ranked_fixed = (
                None if strategy == "random" else mine(inp, f"mine-{strategy}", base_model, pool_index, strategy, 0)
            )
            for seed in range(args.seeds):
                ranked = ranked_fixed or mine(inp, f"mine-{strategy}-{seed}", base_model, pool_index, strategy, seed)
                picked = {image: pool[image] for image in ranked[: args.add]}
                costs.append(sum(n for _a, n in picked.values()))
                mAP, _model = train(inp, f"{strategy}-{seed}", {**labelled, **picked}, val, args, seed)
                maps.append(mAP)
            rows[strategy] = (maps, costs)
            mean, sd, boxes = statistics.mean(maps), statistics.pstdev(maps), statistics.mean(costs)
            print(f"  {strategy:<10} mAP50 {mean:.3f} ± {sd:.3f}  boxes {boxes:.0f}", flush=True)
    base = statistics.mean(rows["random"][0]) if "random" in rows else None
    setting = f"{args.seeds} seeds; {args.epochs} epochs at {args.size} px"
    print(f"\n{args.labelled} labelled + {args.add} picked from {args.pool}; {setting}")
    print("| strategy | mAP50 (mean ± sd) | vs random | boxes to label | mAP50 per 100 boxes added |")
    print("| --- | --- | --- | --- | --- |")
    for strategy, (maps, costs) in rows.items():
        mean = statistics.mean(maps)
        gain = f"{mean / base:.2f}x" if base else "-"
        per_box = (mean - base_map) / statistics.mean(costs) * 100 if costs and statistics.mean(costs) else 0.0
        sd, boxes = statistics.pstdev(maps), statistics.mean(costs)
        print(f"| {strategy} | {mean:.3f} ± {sd:.3f} | {gain} | {boxes:.0f} | {per_box:+.4f} |")
    print(f"(base {base_map:.3f}; {time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
