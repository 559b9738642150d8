"""COCO box evaluation, exact to pycocotools' ``COCOeval`` (bbox, no crowd), vectorised with numpy.

The matching follows COCOeval rule for rule: per (image, class), detections in score order (ties keep their
input order), at most ``max_dets[-1]`` of them; each takes the unmatched ground truth with the highest IoU at
or above the threshold (the last one on ties), preferring boxes that are not ignored (outside the area range);
IoU is computed as pycocotools' ``bbIou`` does, from ``x, y, w, h``. Accumulation concatenates images in
index order and sorts by score stably, takes the precision envelope and samples it at 101 recall points.

Instead of Python loops over detections x ground truths x thresholds, (image, class) groups of similar sizes
are padded into blocks and matched rank by rank for all groups, area ranges and thresholds at once.

Inputs are arrays: image index (0..n_images-1, the evaluation order), class index (0..n_classes-1; others are
ignored and counted), boxes as ``x, y, w, h`` in float64, scores for detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALLS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREAS = {"all": (0.0**2, 1e5**2), "small": (0.0**2, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
MAX_DETS = (1, 10, 100)
SUMMARY = (  # (name, kind, iou threshold or None for all, area, max-dets index): COCOeval.summarize's order
    ("AP", "precision", None, "all", 2),
    ("AP50", "precision", 0.5, "all", 2),
    ("AP75", "precision", 0.75, "all", 2),
    ("AP_small", "precision", None, "small", 2),
    ("AP_medium", "precision", None, "medium", 2),
    ("AP_large", "precision", None, "large", 2),
    ("AR1", "recall", None, "all", 0),
    ("AR10", "recall", None, "all", 1),
    ("AR100", "recall", None, "all", 2),
    ("AR_small", "recall", None, "small", 2),
    ("AR_medium", "recall", None, "medium", 2),
    ("AR_large", "recall", None, "large", 2),
)
EPS = np.spacing(1)


@dataclass
class Boxes:
    """Boxes of many images: ground truth (no scores) or detections (with scores)."""

    image: np.ndarray
    label: np.ndarray
    xywh: np.ndarray
    score: np.ndarray | None = None
    area: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.int64).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(-1)
        self.xywh = np.asarray(self.xywh, dtype=np.float64).reshape(-1, 4)
        if self.score is not None:
            self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.area = self.xywh[:, 2] * self.xywh[:, 3] if self.area is None else np.asarray(self.area, dtype=np.float64)
        n = len(self.image)
        if not (len(self.label) == len(self.xywh) == len(self.area) == n) or (
            self.score is not None and len(self.score) != n
        ):
            raise ValueError("box arrays differ in length")

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> Boxes:
        return Boxes(
            self.image[index],
            self.label[index],
            self.xywh[index],
            None if self.score is None else self.score[index],
            self.area[index] if self.area is not None else None,
        )


@dataclass
class Matching:
    """Per-box outcome of the greedy matching [area, IoU threshold, box]."""

    dt_kept: np.ndarray  # indices into the detections given (known class, within max_dets[-1] per image/class)
    dt_rank: np.ndarray  # rank of each kept detection in its (image, class)
    dt_gt: np.ndarray  # [A, T, n_kept] index of the matched ground truth, -1 when unmatched
    dt_ignored: np.ndarray  # [A, T, n_kept]
    gt_matched: np.ndarray  # [A, T, n_gt] bool
    gt_ignored: np.ndarray  # [A, n_gt] bool


@dataclass
class Evaluation:
    precision: np.ndarray  # [T, R, K, A, M], -1 where undefined
    recall: np.ndarray  # [T, K, A, M]
    scores: np.ndarray  # [T, R, K, A, M]
    ious: np.ndarray
    areas: list[str]
    max_dets: tuple[int, ...]
    stats: dict[str, float]
    matching: Matching
    unknown_class_detections: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def stats_list(self) -> list[float]:
        return [self.stats[name] for name, *_ in SUMMARY]


def iou_xywh(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of boxes ``d`` [..., D, 4] against ``g`` [..., G, 4] → [..., D, G], as pycocotools' ``bbIou``."""
    dx, dy, dw, dh = (d[..., :, None, i] for i in range(4))
    gx, gy, gw, gh = (g[..., None, :, i] for i in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    union = dw * dh + gw * gh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    return np.where((w > 0) & (h > 0), out, 0.0)


def _pow2(n: np.ndarray) -> np.ndarray:
    out = np.ones_like(n)
    big = n > 1
    out[big] = 1 << np.ceil(np.log2(n[big])).astype(np.int64)
    return out


def match(
    gt: Boxes,
    dt: Boxes,
    *,
    n_classes: int,
    ious: np.ndarray = COCO_IOUS,
    area_ranges: list[tuple[float, float]] | None = None,
    max_det: int = 100,
) -> Matching:
    """COCOeval.evaluateImg for every (image, class, area range) at once."""
    area_ranges = area_ranges if area_ranges is not None else list(AREAS.values())
    n_a, n_t = len(area_ranges), len(ious)
    thr = np.minimum(np.asarray(ious, dtype=np.float64), 1 - 1e-10)
    lo = np.array([a for a, _ in area_ranges])
    hi = np.array([b for _, b in area_ranges])
    k = max(n_classes, 1)
    assert dt.score is not None

    # ground truth in (group, input order); detections in (group, -score, input order), ranked
    g_key = gt.image * k + gt.label
    g_order = np.argsort(g_key, kind="stable")
    known = np.flatnonzero((dt.label >= 0) & (dt.label < n_classes))
    d_key_all = dt.image[known] * k + dt.label[known]
    d_order = known[np.lexsort((np.arange(len(known)), -dt.score[known], d_key_all))]
    d_key = dt.image[d_order] * k + dt.label[d_order]
    d_first = np.r_[True, d_key[1:] != d_key[:-1]] if len(d_key) else np.zeros(0, bool)
    starts = np.flatnonzero(d_first)
    rank = np.arange(len(d_key)) - np.repeat(starts, np.diff(np.r_[starts, len(d_key)]))
    within = rank < max_det
    d_order, d_key, rank = d_order[within], d_key[within], rank[within]

    g_sorted_key = g_key[g_order]
    groups = np.union1d(g_sorted_key, d_key)
    g_lo = np.searchsorted(g_sorted_key, groups, "left")
    g_n = np.searchsorted(g_sorted_key, groups, "right") - g_lo
    d_lo = np.searchsorted(d_key, groups, "left")
    d_n = np.searchsorted(d_key, groups, "right") - d_lo

    n_d, n_g = len(d_order), len(g_order)
    dt_gt_sorted = np.full((n_a, n_t, n_d), -1, dtype=np.int64)
    dt_ign_sorted = np.zeros((n_a, n_t, n_d), dtype=bool)
    gt_matched_sorted = np.zeros((n_a, n_t, n_g), dtype=bool)
    g_area = gt.area[g_order] if gt.area is not None else np.zeros(0)
    gt_ign_sorted = (g_area[None, :] < lo[:, None]) | (g_area[None, :] > hi[:, None])  # [A, n_g]
    d_area = dt.area[d_order] if dt.area is not None else np.zeros(0)
    d_out = (d_area[None, :] < lo[:, None]) | (d_area[None, :] > hi[:, None])  # [A, n_d]
    g_box = gt.xywh[g_order]
    d_box = dt.xywh[d_order]

    gb, db = _pow2(g_n), _pow2(d_n)
    bucket_key = gb * (1 << 20) + db
    for key in np.unique(bucket_key):
        sel = np.flatnonzero(bucket_key == key)
        size_g, size_d = int(key >> 20), int(key & ((1 << 20) - 1))
        b = len(sel)
        gi = g_lo[sel, None] + np.arange(size_g)[None, :]  # [B, G]
        g_valid = np.arange(size_g)[None, :] < g_n[sel, None]
        gi = np.where(g_valid, gi, 0)
        di = d_lo[sel, None] + np.arange(size_d)[None, :]
        d_valid = np.arange(size_d)[None, :] < d_n[sel, None]
        di = np.where(d_valid, di, 0)
        if n_g:
            iou = iou_xywh(d_box[di] if n_d else np.zeros((b, size_d, 4)), g_box[gi])  # [B, D, G]
            iou = np.where(g_valid[:, None, :], iou, -1.0)
            ign = np.where(g_valid[:, None, :], gt_ign_sorted[:, gi].transpose(1, 0, 2), True)  # [B, A, G]
        else:
            iou = np.full((b, size_d, size_g), -1.0)
            ign = np.ones((b, n_a, size_g), dtype=bool)
        taken = np.zeros((b, n_a, n_t, size_g), dtype=bool)
        for r in range(size_d):
            act = np.flatnonzero(d_n[sel] > r)
            if not len(act):
                break
            row = iou[act, r, :][:, None, None, :]  # [b, 1, 1, G]
            ok = ~taken[act] & (row >= thr[None, None, :, None])
            ign_a = ign[act][:, :, None, :]
            m = _last_best(ok & ~ign_a, row)
            m_ign = _last_best(ok & ign_a, row)
            m = np.where(m >= 0, m, m_ign)  # [b, A, T]
            bi, ai, ti = np.nonzero(m >= 0)
            taken[act[bi], ai, ti, m[bi, ai, ti]] = True
            flat = di[act, r]  # positions in the sorted detections
            got = m >= 0
            matched_g = np.take_along_axis(
                np.broadcast_to(gi[act][:, None, None, :], (len(act), n_a, n_t, size_g)),
                np.maximum(m, 0)[..., None],
                axis=3,
            )[..., 0]
            dt_gt_sorted[:, :, flat] = np.where(got, matched_g, -1).transpose(1, 2, 0)
            m_is_ign = np.take_along_axis(
                np.broadcast_to(ign[act][:, :, None, :], (len(act), n_a, n_t, size_g)),
                np.maximum(m, 0)[..., None],
                axis=3,
            )[..., 0]
            out_now = d_out[:, flat].T[:, :, None]  # [b, A, 1]
            dt_ign_sorted[:, :, flat] = np.where(got, m_is_ign, out_now).transpose(1, 2, 0)
        if n_g:
            flat_g = gi[g_valid]
            bsel, gpos = np.nonzero(g_valid)
            gt_matched_sorted[:, :, flat_g] = taken[bsel, :, :, gpos].transpose(1, 2, 0)

    # back to input order (detections: kept ones only)
    g_inv = np.empty(n_g, dtype=np.int64)
    g_inv[g_order] = np.arange(n_g)
    dt_gt = np.where(dt_gt_sorted >= 0, g_order[np.maximum(dt_gt_sorted, 0)], -1) if n_g else dt_gt_sorted
    return Matching(
        dt_kept=d_order,
        dt_rank=rank,
        dt_gt=dt_gt,
        dt_ignored=dt_ign_sorted,
        gt_matched=gt_matched_sorted[:, :, g_inv],
        gt_ignored=gt_ign_sorted[:, g_inv],
    )


def _last_best(ok: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Index of the highest IoU among ``ok`` boxes along the last axis, the last one on ties; -1 if none."""
    val = np.where(ok, row, -np.inf)
    size = val.shape[-1]
    last = size - 1 - np.argmax(val[..., ::-1], axis=-1)
    return np.where(ok.any(axis=-1), last, -1)


def accumulate(
    gt: Boxes,
    dt: Boxes,
    matching: Matching,
    *,
    n_classes: int,
    max_dets: tuple[int, ...] = MAX_DETS,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval.accumulate: precision [T, R, K, A, M], recall [T, K, A, M], scores [T, R, K, A, M].

    ``weights`` (per image, e.g. bootstrap counts) repeat images without copying boxes."""
    n_a, n_t, _ = matching.dt_gt.shape
    n_r, n_m = len(RECALLS), len(max_dets)
    precision = -np.ones((n_t, n_r, n_classes, n_a, n_m))
    recall = -np.ones((n_t, n_classes, n_a, n_m))
    scores = -np.ones((n_t, n_r, n_classes, n_a, n_m))
    kept = matching.dt_kept
    assert dt.score is not None
    d_img, d_lab, d_score = dt.image[kept], dt.label[kept], dt.score[kept]
    order = np.lexsort((matching.dt_rank, d_img, -d_score, d_lab))
    g_w = np.ones(len(gt)) if weights is None else weights[gt.image]
    d_w = np.ones(len(kept)) if weights is None else weights[d_img]
    if weights is not None:  # images drawn zero times take no part
        order = order[d_w[order] > 0]
    for mi, max_det in enumerate(max_dets):
        o = order[matching.dt_rank[order] < max_det]
        lab = d_lab[o]
        bounds = np.searchsorted(lab, np.arange(n_classes + 1))
        s = d_score[o]
        w = d_w[o]
        for ai in range(n_a):
            tp_all = matching.dt_gt[ai][:, o] >= 0
            ign = matching.dt_ignored[ai][:, o]
            tps = (tp_all & ~ign) * w
            fps = (~tp_all & ~ign) * w
            npig_all = np.bincount(gt.label, weights=g_w * ~matching.gt_ignored[ai], minlength=n_classes)
            for ki in range(n_classes):
                npig = npig_all[ki]
                if npig == 0:
                    continue
                a, b = bounds[ki], bounds[ki + 1]
                nd = b - a
                tp = np.cumsum(tps[:, a:b], axis=1).astype(float)
                fp = np.cumsum(fps[:, a:b], axis=1).astype(float)
                rc = tp / npig
                pr = tp / (fp + tp + EPS)
                recall[:, ki, ai, mi] = rc[:, -1] if nd else 0
                q = np.zeros((n_t, n_r))
                ss = np.zeros((n_t, n_r))
                if nd:
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    for ti in range(n_t):
                        inds = np.searchsorted(rc[ti], RECALLS, side="left")
                        ok = inds < nd
                        q[ti, ok] = pr[ti, inds[ok]]
                        ss[ti, ok] = s[a:b][inds[ok]]
                precision[:, :, ki, ai, mi] = q
                scores[:, :, ki, ai, mi] = ss
    return precision, recall, scores


def summarize(
    precision: np.ndarray, recall: np.ndarray, ious: np.ndarray, areas: list[str], max_dets: tuple[int, ...]
) -> dict[str, float]:
    """The 12 numbers of COCOeval.summarize (-1 where undefined)."""
    out: dict[str, float] = {}
    for name, kind, iou, area, mi in SUMMARY:
        if area not in areas or mi >= len(max_dets):
            out[name] = -1.0
            continue
        ai = areas.index(area)
        arr = precision[..., ai, mi] if kind == "precision" else recall[..., ai, mi]
        if iou is not None:
            arr = arr[np.flatnonzero(np.isclose(ious, iou, rtol=0, atol=1e-12))]
        valid = arr[arr > -1]
        out[name] = float(np.mean(valid)) if valid.size else -1.0
    return out


def evaluate(
    gt: Boxes,
    dt: Boxes,
    *,
    n_classes: int,
    ious: np.ndarray | list[float] = COCO_IOUS,
    max_dets: tuple[int, ...] = MAX_DETS,
    areas: dict[str, tuple[float, float]] | None = None,
) -> Evaluation:
    """All of COCOeval (evaluate, accumulate, summarize) for boxes."""
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    areas = areas if areas is not None else AREAS
    matching = match(gt, dt, n_classes=n_classes, ious=ious, area_ranges=list(areas.values()), max_det=max(max_dets))
    precision, recall, scores = accumulate(gt, dt, matching, n_classes=n_classes, max_dets=max_dets)
    stats = summarize(precision, recall, ious, list(areas), max_dets)
    assert dt.score is not None
    unknown = int(np.count_nonzero((dt.label < 0) | (dt.label >= n_classes)))
    return Evaluation(precision, recall, scores, ious, list(areas), max_dets, stats, matching, unknown)


def class_ap(ev: Evaluation, iou: float | None = None) -> np.ndarray:
    """AP per class (area all, largest max-dets), NaN where undefined; at one IoU threshold or averaged."""
    p = ev.precision[..., 0, -1]  # [T, R, K]
    if iou is not None:
        p = p[np.isclose(ev.ious, iou, rtol=0, atol=1e-12)]
    out = np.full(p.shape[-1], np.nan)
    for k in range(p.shape[-1]):
        v = p[..., k]
        v = v[v > -1]
        if v.size:
            out[k] = float(v.mean())
    return out


def _first_area_last_maxdet(m: Matching) -> Matching:
    return Matching(m.dt_kept, m.dt_rank, m.dt_gt[:1], m.dt_ignored[:1], m.gt_matched[:1], m.gt_ignored[:1])


def bootstrap_ap(
    gt: Boxes,
    dts: list[Boxes],
    matchings: list[Matching],
    *,
    n_images: int,
    n_classes: int,
    max_det: int = 100,
    rounds: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """mAP (area all, averaged over the IoU thresholds) of each detection set on ``rounds`` resamples of the
    images with replacement, the same resamples for every set: [rounds, n_sets]."""
    rng = np.random.default_rng(seed)
    reduced = [_first_area_last_maxdet(m) for m in matchings]
    out = np.full((rounds, len(dts)), np.nan)
    for r in range(rounds):
        weights = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images).astype(np.float64)
        for j, (dt, m) in enumerate(zip(dts, reduced, strict=True)):
            precision, _recall, _scores = accumulate(
                gt, dt, m, n_classes=n_classes, max_dets=(max_det,), weights=weights
            )
            valid = precision[precision > -1]
            out[r, j] = valid.mean() if valid.size else np.nan
    return out
