"""The network: a strided residual backbone, a small FPN back to stride 4, a class-heatmap head and a box
head (distances to the four sides, trained with a GIoU loss). Peak picking and top-k are part of the model's
``Decode`` module, so the exported ONNX graph gives boxes directly (no NMS step)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
SIZES = {"s": 1.0, "m": 1.5, "l": 2.0}  # width multipliers: CPU default, and larger GPU configurations
# the stride-4 layers (FPN smoothing and both heads): depthwise-separable (default since stop 16: ~1.7x the
# ONNX throughput at 256 px), or full 3 x 3 convolutions (models trained before; their checkpoints name no head)
HEADS = ("separable", "full")


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = conv_bn(channels, channels)
        self.b = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


def separable(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Depthwise k x k then pointwise: about a ninth of a full 3 x 3 convolution's work at 64 channels."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, k, 1, k // 2, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        conv_bn(cin, cout, k=1),
    )


class Detector(nn.Module):
    def __init__(self, num_classes: int, size: str = "s", head: str = "separable") -> None:
        super().__init__()
        m = SIZES[size]
        w = [int(c * m) for c in (24, 32, 64, 128, 192)]
        f = int(64 * m)
        self.num_classes = num_classes
        self.head = head
        self.stem = nn.Sequential(conv_bn(3, w[0], s=2), conv_bn(w[0], w[1], s=2))  # stride 4
        self.c8 = nn.Sequential(conv_bn(w[1], w[2], s=2), Residual(w[2]))
        self.c16 = nn.Sequential(conv_bn(w[2], w[3], s=2), Residual(w[3]), Residual(w[3]))
        self.c32 = nn.Sequential(conv_bn(w[3], w[4], s=2), Residual(w[4]), Residual(w[4]))
        self.lateral = nn.ModuleList(nn.Conv2d(c, f, 1) for c in (w[1], w[2], w[3], w[4]))
        block = {"separable": separable, "full": conv_bn}[head]
        self.smooth = block(f, f)
        self.heat = nn.Sequential(block(f, f), nn.Conv2d(f, num_classes, 1))
        self.box = nn.Sequential(block(f, f), nn.Conv2d(f, 4, 1))
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - 0.1) / 0.1) - 2.0)  # start with low scores
        nn.init.normal_(self.box[-1].weight, std=0.01)
        nn.init.zeros_(self.box[-1].bias)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> Detector:
        """The network a checkpoint describes, with its weights."""
        model = cls(len(checkpoint["class_names"]), str(checkpoint["model_size"]), checkpoint_head(checkpoint))
        model.load_state_dict(checkpoint["state_dict"])
        return model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits [B, C, H/4, W/4] and side distances in pixels [B, 4, H/4, W/4]."""
        heat, box = self.logits(x)
        return heat, side_distances(box)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits and the box head's raw outputs (``side_distances`` makes them pixels)."""
        s4 = self.stem(x)
        s8 = self.c8(s4)
        s16 = self.c16(s8)
        s32 = self.c32(s16)
        p = self.lateral[3](s32)
        for level, lateral in ((s16, self.lateral[2]), (s8, self.lateral[1]), (s4, self.lateral[0])):
            p = lateral(level) + F.interpolate(p, size=level.shape[-2:], mode="nearest")
        p = self.smooth(p)
        return self.heat(p), self.box(p)


def side_distances(box: torch.Tensor) -> torch.Tensor:
    return F.softplus(box) * 16.0


def checkpoint_head(checkpoint: dict) -> str:
    return str(checkpoint.get("model_head", "full"))


def cell_centres(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * STRIDE
    return ys, xs


class Decode(nn.Module):
    """Model + peak picking (3x3 max-pool) + top-k: boxes [B, K, 4] (x1 y1 x2 y2, input pixels), scores [B, K],
    classes [B, K]. This is what is exported to ONNX."""

    def __init__(self, model: Detector, top_k: int = 100) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, box = self.model.logits(images)
        return decode(heat, box, self.top_k, raw_sides=True)


def decode(
    heat: torch.Tensor, sides: torch.Tensor, top_k: int, raw_sides: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks of the heatmap logits (the sigmoid keeps their order), so the sigmoid, and with ``raw_sides`` the
    box head's softplus, run on the top-k alone rather than on the whole map."""
    peaks = heat.masked_fill(F.max_pool2d(heat, 3, 1, 1) != heat, -torch.inf)
    b, c, h, w = heat.shape
    top, index = peaks.reshape(b, c * h * w).topk(min(top_k, c * h * w), dim=1)
    scores = torch.sigmoid(top)
    classes = torch.div(index, h * w, rounding_mode="floor")
    pixel = index - classes * (h * w)
    y = torch.div(pixel, w, rounding_mode="floor")
    x = pixel - y * w
    flat = sides.reshape(b, 4, h * w)
    picked = torch.gather(flat, 2, pixel.unsqueeze(1).expand(b, 4, pixel.shape[1]))  # [B, 4, K]
    if raw_sides:
        picked = side_distances(picked)
    cx = (x.to(torch.float32) + 0.5) * STRIDE
    cy = (y.to(torch.float32) + 0.5) * STRIDE
    boxes = torch.stack((cx - picked[:, 0], cy - picked[:, 1], cx + picked[:, 2], cy + picked[:, 3]), dim=2)
    return boxes, scores, classes


# --- training targets and losses ------------------------------------------------------------------------


def gaussian_radius(height: float, width: float, overlap: float = 0.7) -> float:
    """CenterNet's radius: how far a corner may move and keep ``overlap`` IoU with the box."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - overlap) / (1 + overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * overlap, -2 * overlap * (height + width)
    c3 = (overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def targets(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: a Gaussian class heatmap [C, h, w] (1 at each box centre), side-distance targets [4, h, w]
    and a regression weight [h, w] (the 3x3 cells around each centre that lie inside the box; the smaller
    box wins a shared cell)."""
    h, w = height // STRIDE, width // STRIDE
    batch = len(boxes)
    heat = torch.zeros(batch, num_classes, h, w)
    sides = torch.zeros(batch, 4, h, w)
    weight = torch.zeros(batch, h, w)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * STRIDE
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        area = torch.full((h, w), float("inf"))
        order = torch.argsort((image_boxes[:, 2] - image_boxes[:, 0]) * (image_boxes[:, 3] - image_boxes[:, 1]))
        for j in order.tolist()[::-1]:  # largest first; smaller boxes overwrite shared cells
            x1, y1, x2, y2 = image_boxes[j].tolist()
            bw, bh = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            ix, iy = min(w - 1, max(0, int(cx))), min(h - 1, max(0, int(cy)))
            radius = max(0, int(gaussian_radius(bh, bw)))
            sigma = (2 * radius + 1) / 6
            y0, y1_ = max(0, iy - radius), min(h, iy + radius + 1)
            x0, x1_ = max(0, ix - radius), min(w, ix + radius + 1)
            gy = torch.arange(y0, y1_, dtype=torch.float32) - iy
            gx = torch.arange(x0, x1_, dtype=torch.float32) - ix
            g = torch.exp(-(gy[:, None] ** 2 + gx[None, :] ** 2) / (2 * sigma**2))
            label = int(image_labels[j])
            heat[i, label, y0:y1_, x0:x1_] = torch.maximum(heat[i, label, y0:y1_, x0:x1_], g)
            box_area = bw * bh
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    py, px = iy + dy, ix + dx
                    if not (0 <= py < h and 0 <= px < w):
                        continue
                    cyp, cxp = float(ys[py]), float(xs[px])
                    if not (x1 < cxp < x2 and y1 < cyp < y2) or area[py, px] < box_area:
                        continue
                    area[py, px] = box_area
                    sides[i, :, py, px] = torch.tensor((cxp - x1, cyp - y1, x2 - cxp, y2 - cyp))
                    weight[i, py, px] = 1.0 if (dy, dx) == (0, 0) else 0.5
    return heat, sides, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -torch.log(p) * (1 - p) ** 2 * positive
    neg = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - positive)
    return (pos.sum() + neg.sum()) / positive.sum().clamp(min=1.0)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """GIoU loss between side distances (same centre), over the weighted cells."""
    mask = weight > 0
    if not mask.any():
        return pred.sum() * 0.0
    p = pred.permute(0, 2, 3, 1)[mask]  # [N, 4] l t r b
    t = target.permute(0, 2, 3, 1)[mask]
    wgt = weight[mask]
    p_area = (p[:, 0] + p[:, 2]) * (p[:, 1] + p[:, 3])
    t_area = (t[:, 0] + t[:, 2]) * (t[:, 1] + t[:, 3])
    iw = torch.minimum(p[:, 0], t[:, 0]) + torch.minimum(p[:, 2], t[:, 2])
    ih = torch.minimum(p[:, 1], t[:, 1]) + torch.minimum(p[:, 3], t[:, 3])
    inter = iw * ih
    union = p_area + t_area - inter
    iou = inter / union.clamp(min=1e-6)
    cw = torch.maximum(p[:, 0], t[:, 0]) + torch.maximum(p[:, 2], t[:, 2])
    ch = torch.maximum(p[:, 1], t[:, 1]) + torch.maximum(p[:, 3], t[:, 3])
    enclose = (cw * ch).clamp(min=1e-6)
    giou = iou - (enclose - union) / enclose
    return ((1 - giou) * wgt).sum() / wgt.sum()
