"""Images in, tensors out: letterbox resizing (the longest side to ``image_size``), an in-memory cache of the
resized images, and the cheap augmentations that matter (flip, colour, scale/translate, mosaic)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ymir_detector.contract import ExecutorError, Item


@dataclass
class Sample:
    image: np.ndarray  # uint8 [S, S, 3], letterboxed
    boxes: np.ndarray  # float32 [N, 4] in letterboxed pixels
    labels: np.ndarray  # int64 [N]
    scale: float  # letterboxed = original * scale (top-left aligned)
    size: tuple[int, int]  # original (width, height)


def letterbox(path: str, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """The image scaled so its longest side is ``size``, pasted top-left on a grey square."""
    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
            width, height = img.size
            scale = size / max(width, height)
            resized = img.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
            )
    except (OSError, ValueError) as exc:
        raise ExecutorError("300002", f"cannot read image {path}: {exc}") from None
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.height, : resized.width] = np.asarray(resized)
    return canvas, scale, (width, height)


def load(item: Item, size: int) -> Sample:
    image, scale, original = letterbox(item.image, size)
    boxes = item.boxes.copy() * scale
    return Sample(image, boxes, item.labels.copy(), scale, original)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, S, S, 3] → float [B, 3, S, S] in 0..1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def _keep(boxes: np.ndarray, labels: np.ndarray, size: int, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clipped = boxes.clip(0, size)
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area_before = np.maximum((before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1]), 1e-6)
    keep = (area > 16) & (area / area_before > 0.3)
    return clipped[keep], labels[keep]


def rescale(sample: Sample, factor: float, rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zoom by ``factor`` and place at a random offset on the square (crop when larger)."""
    new = max(8, round(size * factor))
    img = np.asarray(Image.fromarray(sample.image).resize((new, new), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), 114, np.uint8)
    if new <= size:
        ox, oy = rng.randint(0, size - new), rng.randint(0, size - new)
        canvas[oy : oy + new, ox : ox + new] = img
        shift = (ox, oy)
    else:
        cx, cy = rng.randint(0, new - size), rng.randint(0, new - size)
        canvas[:] = img[cy : cy + size, cx : cx + size]
        shift = (-cx, -cy)
    scaled = sample.boxes * (new / size)
    moved = scaled + np.array([shift[0], shift[1], shift[0], shift[1]], np.float32)
    boxes, labels = _keep(moved, sample.labels, size, moved)
    return canvas, boxes, labels


def mosaic(samples: list[Sample], rng: random.Random, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images at half size in a 2x2 grid, the grid cut at a random point near the centre."""
    half = size // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    all_boxes, all_labels = [], []
    for k, sample in enumerate(samples):
        small = np.asarray(Image.fromarray(sample.image).resize((half, half), Image.Resampling.BILINEAR))
        ox, oy = (k % 2) * half, (k // 2) * half
        canvas[oy : oy + half, ox : ox + half] = small
        all_boxes.append(sample.boxes * 0.5 + np.array([ox, oy, ox, oy], np.float32))
        all_labels.append(sample.labels)
    boxes = np.concatenate(all_boxes).reshape(-1, 4)
    labels = np.concatenate(all_labels)
    # a random crop-and-zoom of the mosaic keeps object sizes from always halving
    zoom = rng.uniform(1.0, 1.6)
    crop = round(size / zoom)
    cx, cy = rng.randint(0, size - crop), rng.randint(0, size - crop)
    region = canvas[cy : cy + crop, cx : cx + crop]
    canvas = np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.BILINEAR))
    moved = (boxes - np.array([cx, cy, cx, cy], np.float32)) * (size / crop)
    boxes, labels = _keep(moved, labels, size, moved)
    return canvas, boxes, labels


def colour(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter per image (float 0..1 [B, 3, S, S])."""
    b = images.shape[0]
    brightness = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.5
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.5
    saturation = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.6
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    grey = images.mean(dim=1, keepdim=True)
    images = (images - grey) * saturation + grey
    return images.clamp_(0, 1)


class Batches:
    """Training batches from cached samples with augmentation; one pass = one epoch."""

    def __init__(self, samples: list[Sample], size: int, batch_size: int, seed: int, augment: bool = True) -> None:
        self.samples = samples
        self.size = size
        self.batch_size = batch_size
        self.rng = random.Random(seed)  # noqa: S311 (augmentation, not security)
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment
        self.mosaic_p = 0.5
        self.scale_range = (0.6, 1.4)

    def __len__(self) -> int:
        return max(1, len(self.samples) // self.batch_size)

    def _one(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.samples[index]
        if not self.augment:
            return sample.image, sample.boxes, sample.labels
        if self.rng.random() < self.mosaic_p and len(self.samples) >= 4:
            chosen = [sample] + [self.samples[self.rng.randrange(len(self.samples))] for _ in range(3)]
            image, boxes, labels = mosaic(chosen, self.rng, self.size)
        else:
            image, boxes, labels = rescale(sample, self.rng.uniform(*self.scale_range), self.rng, self.size)
        if self.rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, [0, 2]] = self.size - boxes[:, [2, 0]]
        return np.ascontiguousarray(image), boxes, labels

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = list(range(len(self.samples)))
        self.rng.shuffle(order)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = [self._one(i) for i in order[start : start + self.batch_size]]
            images = to_tensor(np.stack([c[0] for c in chunk]))
            if self.augment:
                images = colour(images, self.generator)
            yield (
                images,
                [torch.from_numpy(c[1]).float() for c in chunk],
                [torch.from_numpy(c[2]).long() for c in chunk],
            )
