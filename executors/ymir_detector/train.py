"""Training: from scratch or from given weights; stages every N epochs and the best one, each with
``model.pt`` and ``model.onnx`` (decoding inside); TensorBoard scalars; progress in monitor.txt.
More than one GPU: distributed data parallel, one process per GPU."""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ymir_detector import contract
from ymir_detector.contract import Env, ExecutorError, Monitor
from ymir_detector.data import Batches, Sample, load, to_tensor
from ymir_detector.evaluate import mean_ap
from ymir_detector.model import HEADS, SIZES, Decode, Detector, checkpoint_head, focal_loss, giou_loss, targets
from ymir_detector.tensorboard import EventWriter

DEFAULTS: dict[str, Any] = {
    "model_size": "s",
    "model_head": "separable",
    "epochs": 30,
    "batch_size": 16,
    "learning_rate": 0.003,
    "weight_decay": 0.05,
    "image_size": 256,
    "save_every_epochs": 10,
    "mosaic": 0.5,
    "ema": True,
    "seed": 0,
    "workers": 0,
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS and v is not None}}
    checks = {
        "epochs": lambda v: isinstance(v, int) and 1 <= v <= 10000,
        "batch_size": lambda v: isinstance(v, int) and 1 <= v <= 1024,
        "learning_rate": lambda v: isinstance(v, int | float) and 0 < v < 1,
        "weight_decay": lambda v: isinstance(v, int | float) and 0 <= v < 1,
        "image_size": lambda v: isinstance(v, int) and 64 <= v <= 2048 and v % 32 == 0,
        "save_every_epochs": lambda v: isinstance(v, int) and v >= 1,
        "model_size": lambda v: v in SIZES,
        "model_head": lambda v: v in HEADS,
        "mosaic": lambda v: isinstance(v, int | float) and 0 <= v <= 1,
        "workers": lambda v: isinstance(v, int) and v >= 0,
    }
    for key, ok in checks.items():
        if not ok(merged[key]):
            raise ExecutorError("300001", f"invalid {key}: {merged[key]!r}")
    return merged


def checkpoint(model: Detector, class_names: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "state_dict": model.state_dict(),
        "class_names": class_names,
        "image_size": opts["image_size"],
        "model_size": opts["model_size"],
        "model_head": model.head,
        "format": "ymir-detector/1",
    }


def load_checkpoint(paths: list[str]) -> dict[str, Any] | None:
    for path in paths:
        if path.endswith(".pt") and Path(path).is_file():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ExecutorError("300003", f"cannot read the model {path}: {exc}") from None
            if not isinstance(data, dict) or data.get("format") != "ymir-detector/1":
                raise ExecutorError("300003", f"{path} is not a model of this executor")
            return data
    return None


def export_onnx(model: Detector, path: Path, image_size: int) -> None:
    decoder = Decode(copy.deepcopy(model).cpu().eval())
    dummy = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps constant (the image size is fixed)
        torch.onnx.export(
            decoder,
            (dummy,),
            str(path),
            input_names=["images"],
            output_names=["boxes", "scores", "classes"],
            dynamic_axes={
                "images": {0: "batch"},
                "boxes": {0: "batch"},
                "scores": {0: "batch"},
                "classes": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    import json

    import onnx

    graph = onnx.load(str(path))
    for key, value in (("class_names", json.dumps(model_class_names(model))), ("image_size", str(image_size))):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def model_class_names(model: Detector) -> list[str]:
    return list(getattr(model, "class_names", []))


class Ema:
    """An exponential moving average of the weights (warmed up), used for evaluation and saving."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 200))
        current = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


@torch.no_grad()
def predict(
    model: Detector, samples: list[Sample], device: torch.device, batch: int = 16
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    model.eval()
    decoder = Decode(model)
    out = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        images = to_tensor(np.stack([s.image for s in chunk])).to(device)
        boxes, scores, classes = decoder(images)
        for i in range(len(chunk)):
            keep = scores[i] > 0.001
            out.append((boxes[i][keep].cpu().numpy(), scores[i][keep].cpu().numpy(), classes[i][keep].cpu().numpy()))
    return out


def evaluate(model: Detector, samples: list[Sample], device: torch.device, classes: int) -> dict[str, float]:
    dets = predict(model, samples, device)
    return mean_ap([(s.boxes, s.labels) for s in samples], dets, classes)


def run(env: Env, monitor: Monitor) -> None:
    opts = settings(env.config)
    class_names = env.class_names
    if not class_names:
        raise ExecutorError("300001", "class_names is empty")
    fmt = contract.export_format(env.config)
    train_items = contract.read_index(env.input["training_index_file"], True, class_names, fmt)
    val_items = contract.read_index(env.input["val_index_file"], True, class_names, fmt)
    if not train_items:
        raise ExecutorError("300004", "the training set is empty")
    if not any(len(i.labels) for i in train_items):
        raise ExecutorError("300004", "the training set has no boxes of the chosen classes")
    world = _world(int(env.config.get("gpu_count") or 0))
    if world > 1:
        import torch.multiprocessing as mp

        if len(train_items) < world:
            raise ExecutorError("300004", f"{len(train_items)} training images for {world} processes")
        port = 29500 + (os.getpid() % 1000)
        print(f"distributed data parallel: {world} processes", flush=True)
        mp.spawn(_worker, args=(world, port, env, opts, train_items, val_items), nprocs=world, join=True)
        return
    _worker(0, 1, 0, env, opts, train_items, val_items, monitor)


def _world(gpus: int) -> int:
    """Processes to train with: one per GPU when more than one is asked for and present; on a host without
    GPUs, ``YMIR_DETECTOR_CPU_PROCESSES`` (the same code path on the gloo backend, which is how it is tested)."""
    if gpus > 0 and torch.cuda.is_available():
        return gpus if gpus > 1 and torch.cuda.device_count() >= gpus else 1
    return max(1, int(os.environ.get("YMIR_DETECTOR_CPU_PROCESSES") or 1))


def _worker(
    rank: int,
    world: int,
    port: int,
    env: Env,
    opts: dict[str, Any],
    train_items: list[contract.Item],
    val_items: list[contract.Item],
    monitor: Monitor | None = None,
) -> None:
    distributed = world > 1
    use_cuda = int(env.config.get("gpu_count") or 0) > 0 and torch.cuda.is_available()
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        if use_cuda:
            torch.cuda.set_device(rank)
    main = rank == 0
    monitor = monitor or Monitor(env)
    device = torch.device(f"cuda:{rank}" if use_cuda else "cpu")
    if opts["workers"]:
        torch.set_num_threads(int(opts["workers"]))
    torch.manual_seed(opts["seed"] + rank)
    class_names = env.class_names
    size = opts["image_size"]

    pretrained = load_checkpoint([str(p) for p in env.config.get("pretrained_model_params") or []])
    if pretrained:  # the pretrained model's shape wins
        opts["model_size"], opts["model_head"] = str(pretrained["model_size"]), checkpoint_head(pretrained)
    model = Detector(len(class_names), opts["model_size"], opts["model_head"])
    model.class_names = list(class_names)
    if pretrained:
        own = model.state_dict()
        usable = {k: v for k, v in pretrained["state_dict"].items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
    model.to(device)
    if distributed and use_cuda:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # every process the same number of images, hence of steps: DDP's all-reduce waits for each of them
    share = len(train_items) // world
    samples = [load(item, size) for item in train_items[rank::world][:share]]
    val = [load(item, size) for item in val_items] if main else []
    if main:
        monitor.progress(0.05, force=True)
    batches = Batches(samples, size, opts["batch_size"], opts["seed"] + rank)
    batches.mosaic_p = float(opts["mosaic"])
    net = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if use_cuda else None)
        if distributed
        else model
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=opts["learning_rate"], weight_decay=opts["weight_decay"])
    total_steps = opts["epochs"] * len(batches)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=opts["learning_rate"], total_steps=total_steps, pct_start=0.15
    )
    ema = Ema(model) if opts["ema"] else None
    board = EventWriter(env.output.get("tensorboard_dir", "/out/tensorboard")) if main else None
    models_dir = Path(env.output.get("models_dir", "/out/models"))
    stages: dict[str, dict[str, Any]] = {}
    best: tuple[float, str] = (-1.0, "")
    step = 0
    started = time.monotonic()
    for epoch in range(1, opts["epochs"] + 1):
        net.train()
        losses = []
        for images, boxes, labels in batches:
            heat_t, sides_t, weight_t = targets(boxes, labels, len(class_names), size, size)
            heat, sides = net(images.to(device))
            loss_heat = focal_loss(heat, heat_t.to(device))
            loss_box = giou_loss(sides, sides_t.to(device), weight_t.to(device))
            loss = loss_heat + 2.0 * loss_box
            if not torch.isfinite(loss):
                raise ExecutorError("300201", f"the loss became {loss.item()} at epoch {epoch}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            if ema:
                ema.update(model)
            losses.append(float(loss.detach()))
            step += 1
            if main:
                monitor.progress(0.05 + 0.85 * step / total_steps)
        if not main:
            continue
        assert board is not None
        board.scalars(epoch, {"train/loss": float(np.mean(losses)), "train/lr": schedule.get_last_lr()[0]})
        if epoch % opts["save_every_epochs"] and epoch != opts["epochs"]:
            continue
        weights = ema.model if ema else model
        metrics = evaluate(weights, val, device, len(class_names)) if val else {"mAP50": 0.0, "mAP50_95": 0.0}
        board.scalars(epoch, {"val/mAP50": metrics["mAP50"], "val/mAP50_95": metrics["mAP50_95"]})
        name = f"epoch_{epoch}"
        _save_stage(models_dir / name, weights, class_names, opts)
        stages[name] = {
            "stage_name": name,
            "files": ["model.pt", "model.onnx"],
            "timestamp": int(time.time()),
            "mAP": round(metrics["mAP50"], 6),
            "mAP50_95": round(metrics["mAP50_95"], 6),
            "epoch": epoch,
            "seconds": round(time.monotonic() - started, 1),
        }
        if metrics["mAP50_95"] >= best[0]:
            best = (metrics["mAP50_95"], name)
        contract.write_training_result(env, {**stages, **_best_stage(models_dir, stages, best[1])}, "best")
    if main:
        assert board is not None
        board.close()
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def _save_stage(folder: Path, model: torch.nn.Module, class_names: list[str], opts: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plain = model.module if hasattr(model, "module") else model
    torch.save(checkpoint(plain, class_names, opts), folder / "model.pt")
    export_onnx(plain, folder / "model.onnx", opts["image_size"])


def _best_stage(models_dir: Path, stages: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The best stage so far, as its own stage ``best`` (a copy of its files)."""
    target = models_dir / "best"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(models_dir / name, target)
    return {"best": {**stages[name], "stage_name": "best", "from": name}}
