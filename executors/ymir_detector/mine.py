"""Mining: score every candidate image by how much labelling it would teach the model.

Strategies (``strategy`` in mining-template.yaml):
- ``random``: a seeded shuffle (the baseline every other strategy must beat);
- ``entropy``: the summed binary entropy of the detections' scores;
- ``margin``: least confidence: how close the most uncertain detection is to 0.5;
- ``aldd``: spatial disagreement (ALDD): the largest gap between the entropy of the pooled class
  probabilities and the pooled entropy, over the heatmap;
- ``cald``: consistency under a horizontal flip and a rescale (CALD): 1 - how well the detections agree;
- ``cost_aware``: entropy divided by the expected number of boxes, so an image is not chosen just for
  holding many objects (plain entropy correlates with the object count);
- ``shift_aldd``: ALDD, plus how unfamiliar an image looks to the model: how far the statistics of its early
  features (stem and stride 8) fall from the batch-norm statistics learned on the training set (mean squared
  z-score of the channel means). An image scores its better rank of the two, so the picks are the most uncertain
  images and the most unfamiliar ones. Uncertainty alone misses images the model is silent on (dark, noisy,
  another camera): no detection there is uncertain, yet they are what the training set lacks.
- ``shift_mass``: the same shift score, beside the uncertain mass: the summed scores of the detections the
  model half-sees (``conf_threshold`` to 0.5), which grows with the objects it is unsure of, so crowded heaps and
  partly hidden parts rank high. An image scores its better rank of the two, so the picks split between the
  unfamiliar images and the ones full of half-found objects.
- ``shift_aldd_mass``: all three, ALDD, the shift score and the uncertain mass; the best rank of the three.
- ``spread``: the ``shift_aldd_mass`` rank, spread over what the pool looks like. The top third by that rank are
  the candidates; they are ordered greedily, each next one the candidate whose rank times its distance to the
  ones before it (cosine, on the deepest features averaged over the image) is largest. So any top-k holds the
  most uncertain images of every kind the pool holds instead of k of one kind (ranking alone fills a round with
  dark frames and crowded heaps and leaves out the ordinary images the model still gets wrong). The candidates
  score above every other image, in that order.
With ``run_infer`` the same forward pass also gives the predictions (pre-annotations)."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ymir_detector import contract
from ymir_detector.contract import Env, ExecutorError, Monitor
from ymir_detector.data import letterbox, to_tensor
from ymir_detector.evaluate import iou_matrix
from ymir_detector.model import Detector, decode
from ymir_detector.train import load_checkpoint

STRATEGIES = (
    "random",
    "entropy",
    "margin",
    "aldd",
    "cald",
    "cost_aware",
    "shift_aldd",
    "shift_mass",
    "shift_aldd_mass",
    "spread",
)
SHIFTED = ("shift_aldd", "shift_mass", "shift_aldd_mass", "spread")
DEFAULTS: dict[str, Any] = {"strategy": "aldd", "batch_size": 16, "conf_threshold": 0.05, "seed": 0}


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def shift_hooks(model: Detector) -> tuple[list[torch.Tensor], list[Any]]:
    """Hooks on the early batch norms that append, per forward pass, each image's mean squared z-score of its
    channel means against the running statistics (remove the returned handles when done)."""
    found: list[torch.Tensor] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        assert module.running_mean is not None and module.running_var is not None
        means = inputs[0].mean(dim=(2, 3))
        z = (means - module.running_mean) / torch.sqrt(module.running_var + module.eps)
        found.append((z**2).mean(dim=1))

    handles = [
        m.register_forward_hook(hook)
        for m in [*model.stem.modules(), *model.c8.modules()]
        if isinstance(m, nn.BatchNorm2d)
    ]
    return found, handles


def better_rank(*scores: list[float]) -> list[float]:
    """Each image's best rank (0..1, 1 = top) of several scores."""

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(np.asarray(values), kind="stable")
        out = np.empty(len(values))
        out[order] = np.arange(len(values)) / max(1, len(values) - 1)
        return out

    return np.max([ranks(values) for values in scores], axis=0).tolist()


def embedding_hook(model: Detector) -> tuple[list[torch.Tensor], Any]:
    """A hook that appends, per forward pass, each image's deepest features averaged over the image, unit length
    (remove the returned handle when done)."""
    found: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        found.append(F.normalize(output.mean(dim=(2, 3)), dim=1))

    return found, model.c32.register_forward_hook(hook)


def spread_order(rank: list[float], vectors: np.ndarray, share: float = 1 / 3) -> list[float]:
    """Scores that put the top ``share`` by ``rank`` first, ordered greedily by rank x cosine distance to the
    ones already ordered (see ``spread``); every other image keeps its rank (all ranks are <= 1)."""
    ranks = np.asarray(rank, dtype=np.float64)
    count = max(1, math.ceil(len(ranks) * share))
    candidates = np.argsort(-ranks, kind="stable")[:count]
    chosen = vectors[candidates]
    weight = ranks[candidates]
    nearest = np.full(count, 2.0)  # distance to the nearest one already ordered (2: none yet, the farthest)
    taken = np.zeros(count, dtype=bool)
    out = ranks.copy()
    for position in range(count):
        best = int(np.argmax(np.where(taken, -1.0, weight * nearest)))
        taken[best] = True
        out[candidates[best]] = 2.0 - position / count
        nearest = np.minimum(nearest, 1.0 - chosen @ chosen[best])
    return out.tolist()


def uncertain_mass(det_scores: torch.Tensor, conf: float) -> float:
    """The summed scores of one image's half-seen detections (``conf`` to 0.5)."""
    return float(det_scores[(det_scores >= conf) & (det_scores < 0.5)].sum())


def scores_for(
    strategy: str, model: Detector, images: torch.Tensor, conf: float
) -> tuple[list[float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    heat, sides = model(images)
    probs = torch.sigmoid(heat)
    boxes, det_scores, classes = decode(heat, sides, 100)
    out = []
    if strategy == "aldd":
        pooled = F.avg_pool2d(probs, 3, 1, 1)
        gap = _entropy(pooled) - F.avg_pool2d(_entropy(probs), 3, 1, 1)
        out = gap.flatten(1).max(dim=1).values.tolist()
    elif strategy == "cald":
        flipped_heat, flipped_sides = model(images.flip(-1))
        fb, fs, fc = decode(flipped_heat, flipped_sides, 100)
        width = images.shape[-1]
        fb = torch.stack((width - fb[..., 2], fb[..., 1], width - fb[..., 0], fb[..., 3]), dim=-1)
        for i in range(images.shape[0]):
            keep = det_scores[i] > conf
            a_boxes, a_scores, a_cls = boxes[i][keep].numpy(), det_scores[i][keep].numpy(), classes[i][keep].numpy()
            if not len(a_boxes):
                out.append(float(det_scores[i].max()))  # nothing confident: as uncertain as its best guess
                continue
            ious = iou_matrix(a_boxes, fb[i].numpy())
            same = a_cls[:, None] == fc[i].numpy()[None, :]
            ious = np.where(same, ious, 0.0)
            best = ious.argmax(axis=1)
            agreement = ious.max(axis=1) * (1 - np.abs(a_scores - fs[i].numpy()[best]))
            out.append(float(1 - agreement.mean()))
    else:
        for i in range(images.shape[0]):
            s = det_scores[i]
            s = s[s > 0.01]
            h = _entropy(s)
            if strategy == "entropy":
                out.append(float(h.sum()))
            elif strategy == "margin":
                out.append(float(1 - (2 * (s - 0.5).abs()).min()) if len(s) else 0.0)
            elif strategy == "mass":
                out.append(uncertain_mass(det_scores[i], conf))
            else:  # cost_aware
                expected = float(det_scores[i][det_scores[i] > conf].sum())
                out.append(float(h.sum()) / (1.0 + expected))
    return out, (boxes, det_scores, classes)


def run(env: Env, monitor: Monitor) -> None:
    opts = {**DEFAULTS, **{k: env.config[k] for k in DEFAULTS if env.config.get(k) is not None}}
    if opts["strategy"] not in STRATEGIES:
        raise ExecutorError("300001", f"unknown strategy {opts['strategy']!r}; choose one of {', '.join(STRATEGIES)}")
    checkpoint = load_checkpoint([str(p) for p in env.config.get("model_params_path") or []])
    if checkpoint is None:
        raise ExecutorError("300003", "model_params_path holds no model.pt")
    names = list(checkpoint["class_names"])
    model = Detector.from_checkpoint(checkpoint)
    model.eval()
    size = int(checkpoint["image_size"])
    wanted = {n.lower() for n in env.class_names} or {n.lower() for n in names}
    items = contract.read_index(env.input["candidate_index_file"], False, env.class_names, "none")
    if not items:
        raise ExecutorError("300004", "no candidate images")
    rng = random.Random(opts["seed"])  # noqa: S311 (the random baseline)
    scored: list[tuple[str, float]] = []
    predictions: dict[str, list[dict[str, Any]]] = {}
    batch = int(opts["batch_size"])
    shifted = opts["strategy"] in SHIFTED
    with_mass = opts["strategy"] in ("shift_aldd_mass", "spread")
    shifts: list[float] = []
    masses: list[float] = []
    found, handles = shift_hooks(model) if shifted else ([], [])
    embedded: list[torch.Tensor] = []
    if opts["strategy"] == "spread":
        embedded, handle = embedding_hook(model)
        handles.append(handle)
    strategy = {"random": "entropy", "shift_mass": "mass"}.get(opts["strategy"], opts["strategy"])
    if opts["strategy"] in ("shift_aldd", "shift_aldd_mass", "spread"):
        strategy = "aldd"
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            loaded = [letterbox(item.image, size) for item in chunk]
            images = to_tensor(np.stack([img for img, _s, _o in loaded]))
            values, (boxes, det_scores, classes) = scores_for(strategy, model, images, float(opts["conf_threshold"]))
            if opts["strategy"] == "random":
                values = [rng.random() for _ in chunk]
            if shifted:
                shifts += torch.stack(found).mean(dim=0).tolist()
                found.clear()
            if with_mass:
                masses += [uncertain_mass(row, float(opts["conf_threshold"])) for row in det_scores]
            for i, item in enumerate(chunk):
                scored.append((item.image, values[i]))
                if env.run_infer:
                    predictions[item.image] = _boxes(
                        boxes[i], det_scores[i], classes[i], loaded[i], names, wanted, opts
                    )
            monitor.progress(0.05 + 0.9 * min(1.0, (start + batch) / len(items)))
    for handle in handles:
        handle.remove()
    if shifted:
        combined = better_rank([v for _i, v in scored], shifts, *([masses] if masses else []))
        if embedded:
            combined = spread_order(combined, torch.cat(embedded).numpy())
        scored = [(image, value) for (image, _v), value in zip(scored, combined, strict=True)]
    contract.write_mining_result(env, scored)
    if env.run_infer:
        contract.write_infer_result(env, predictions)


def _boxes(boxes, scores, classes, loaded, names, wanted, opts) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    _img, scale, (width, height) = loaded
    found = []
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
        if score < opts["conf_threshold"] or names[int(cls)].lower() not in wanted:
            continue
        x1, y1, x2, y2 = (v / scale for v in box)
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            box_out = {"x": round(x1, 2), "y": round(y1, 2), "w": round(x2 - x1, 2), "h": round(y2 - y1, 2)}
            found.append({"box": box_out, "class_name": names[int(cls)], "score": round(score, 5)})
    return found
