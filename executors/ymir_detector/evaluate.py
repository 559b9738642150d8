"""A compact COCO-style mAP (all-point precision envelope sampled at 101 recall points, maxDets 100, no
crowd, no area ranges) for choosing the best stage. The platform computes its own numbers; this one only
steers training."""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALLS = np.linspace(0, 1, 101)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def mean_ap(
    gts: list[tuple[np.ndarray, np.ndarray]], dets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], classes: int
) -> dict[str, float]:
    """gts: per image (boxes, labels); dets: per image (boxes, scores, labels). mAP@.5 and mAP@.5:.95 over
    the classes that have ground truth."""
    aps = np.full((len(THRESHOLDS), classes), np.nan)
    for c in range(classes):
        scores_all, matched_all, total = [], [], 0
        for (gb, gl), (db, ds, dl) in zip(gts, dets, strict=True):
            g = gb[gl == c]
            keep = dl == c
            d, s = db[keep], ds[keep]
            order = np.argsort(-s, kind="mergesort")[:100]
            d, s = d[order], s[order]
            total += len(g)
            ious = iou_matrix(d, g)
            matched = np.zeros((len(THRESHOLDS), len(d)), bool)
            for t, thr in enumerate(THRESHOLDS):
                taken = np.zeros(len(g), bool)
                for i in range(len(d)):
                    if len(g) == 0:
                        break
                    candidates = np.where(~taken & (ious[i] >= thr))[0]
                    if len(candidates):
                        j = candidates[np.argmax(ious[i, candidates])]
                        taken[j] = True
                        matched[t, i] = True
            scores_all.append(s)
            matched_all.append(matched)
        if total == 0:
            continue
        scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
        matched = np.concatenate(matched_all, axis=1) if matched_all else np.zeros((len(THRESHOLDS), 0), bool)
        order = np.argsort(-scores, kind="mergesort")
        for t in range(len(THRESHOLDS)):
            tp = np.cumsum(matched[t, order])
            fp = np.cumsum(~matched[t, order])
            recall = tp / total
            precision = tp / np.maximum(tp + fp, 1e-9)
            envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
            idx = np.searchsorted(recall, RECALLS, side="left")
            sampled = np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])
            aps[t, c] = sampled.mean()
    if np.all(np.isnan(aps)):
        return {"mAP50": 0.0, "mAP50_95": 0.0}
    return {"mAP50": float(np.nanmean(aps[0])), "mAP50_95": float(np.nanmean(aps))}
