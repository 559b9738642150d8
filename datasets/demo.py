"""A deterministic generator of a Lego-like detection set: bricks, plates, tiles, beams and slopes.

Objects are drawn with a side face, studs or holes, in varied colours on varied backgrounds, with occlusion,
blur, noise and unlabelled distractor shapes. Boxes are exact (the drawn extent). The same seed gives the
same bytes. Sizes of the seed-002 demo: 100 training, 10 test and 1181 mining images.

Two scenes. ``lab``: every image a table top with 2-9 parts, the conditions the demo's training set is shot in.
``field``: what a camera in use collects — half such images, and the rest empty frames (distractors only),
dim and noisy frames, far-away (small) parts and crowded heaps, in the shares of ``FIELD_CONDITIONS``.
A pool of field images is where mining has something to find that random picking mostly misses.

``tail``: the classes are drawn long-tailed (``TAIL_WEIGHTS``) instead of evenly, as in most real collections:
a few part types are common, beams and slopes are rare. The backgrounds and conditions stay those of the
even draw; the parts placed on them differ.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("brick_2x2", "brick_2x4", "plate_1x2", "plate_2x2", "tile_1x2", "tile_2x2", "beam_1x6", "slope_2x2")
COLOURS = [
    (200, 30, 30),
    (20, 90, 190),
    (240, 200, 20),
    (30, 140, 60),
    (240, 240, 240),
    (40, 40, 40),
    (240, 120, 20),
    (140, 60, 160),
    (120, 120, 125),
    (170, 110, 60),
]
# (studs across, studs deep, body height in stud units, has studs, has holes)
SHAPES = {
    "brick_2x2": (2, 2, 1.2, True, False),
    "brick_2x4": (4, 2, 1.2, True, False),
    "plate_1x2": (2, 1, 0.4, True, False),
    "plate_2x2": (2, 2, 0.4, True, False),
    "tile_1x2": (2, 1, 0.4, False, False),
    "tile_2x2": (2, 2, 0.4, False, False),
    "beam_1x6": (6, 1, 1.0, False, True),
    "slope_2x2": (2, 2, 1.2, False, False),
}
DEMO_SPLITS = {"train": 100, "test": 10, "mining": 1181}
SCENES = ("lab", "field")
# condition -> share of a field pool
FIELD_CONDITIONS = {"lab": 0.5, "empty": 0.2, "dim": 0.1, "small": 0.1, "crowded": 0.1}
# class -> relative frequency of a long-tailed collection (``tail=True``)
TAIL_WEIGHTS = {
    "brick_2x2": 1.0,
    "brick_2x4": 1.0,
    "plate_2x2": 1.0,
    "tile_1x2": 0.6,
    "plate_1x2": 0.35,
    "tile_2x2": 0.2,
    "slope_2x2": 0.1,
    "beam_1x6": 0.06,
}


@dataclass(frozen=True)
class DemoBox:
    label: str
    x1: int
    y1: int
    x2: int
    y2: int
    occluded: bool


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = colour
    return (min(255, int(r * factor)), min(255, int(g * factor)), min(255, int(b * factor)))


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    base = (rng.randint(60, 230), rng.randint(60, 230), rng.randint(60, 230))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:  # a gradient table top
        other = _shade(base, rng.uniform(0.6, 1.3))
        for y in range(0, height, 4):
            t = y / height
            colour = tuple(int(a + (b - a) * t) for a, b in zip(base, other, strict=True))
            draw.rectangle([0, y, width, y + 4], fill=colour)
    else:  # wood-like stripes
        for _ in range(rng.randint(10, 30)):
            y = rng.randint(0, height)
            draw.line(
                [0, y, width, y + rng.randint(-20, 20)],
                fill=_shade(base, rng.uniform(0.8, 1.15)),
                width=rng.randint(1, 6),
            )
    return image


def _distractor(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
    x, y, r = rng.randint(0, width), rng.randint(0, height), rng.randint(5, 40)
    if rng.random() < 0.5:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=rng.randint(1, 4))
    else:
        draw.line([x, y, x + rng.randint(-80, 80), y + rng.randint(-80, 80)], fill=colour, width=rng.randint(1, 5))


def _draw_object(
    rng: random.Random, draw: ImageDraw.ImageDraw, label: str, x: int, y: int, unit: int
) -> tuple[int, int, int, int]:
    across, deep, body, studs, holes = SHAPES[label]
    colour = rng.choice(COLOURS)
    w, top_h, side_h = across * unit, int(deep * unit * 0.55), max(3, int(body * unit))
    if label == "slope_2x2":
        draw.polygon(
            [(x, y + top_h + side_h), (x + w, y + top_h + side_h), (x + w, y), (x + int(w * 0.6), y)], fill=colour
        )
        draw.rectangle([x, y + top_h, x + w, y + top_h + side_h], fill=_shade(colour, 0.7))
        return x, y, x + w, y + top_h + side_h
    draw.rectangle([x, y, x + w, y + top_h], fill=_shade(colour, 1.15))  # top face
    draw.rectangle([x, y + top_h, x + w, y + top_h + side_h], fill=_shade(colour, 0.7))  # front face
    top_extent = y
    if studs:
        r = max(2, unit // 4)
        for i in range(across):
            for j in range(deep):
                cx = x + int((i + 0.5) * unit)
                cy = y + int((j + 0.5) * top_h / deep)
                draw.ellipse(
                    [cx - r, cy - r - r // 2, cx + r, cy + r - r // 2],
                    fill=_shade(colour, 1.3),
                    outline=_shade(colour, 0.6),
                )
                top_extent = min(top_extent, cy - r - r // 2)
    elif label.startswith("tile"):
        draw.line([x + 2, y + 2, x + w - 2, y + 2], fill=(255, 255, 255), width=2)  # glossy edge
    if holes:
        r = max(2, unit // 4)
        for i in range(across):
            cx, cy = x + int((i + 0.5) * unit), y + top_h + side_h // 2
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_shade(colour, 0.35))
    return x, top_extent, x + w, y + top_h + side_h


def field_condition(seed: int, index: int) -> str:
    """The condition of image ``index`` of a field scene (deterministic)."""
    draw = random.Random(f"field-{seed}-{index}").random()
    for condition, share in FIELD_CONDITIONS.items():
        if draw < share:
            return condition
        draw -= share
    return "lab"


def make_image(
    seed: int, index: int, width: int = 640, height: int = 480, scene: str = "lab", tail: bool = False
) -> tuple[bytes, list[DemoBox]]:
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}")
    condition = field_condition(seed, index) if scene == "field" else "lab"
    rng = random.Random(seed * 1_000_003 + index)
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 6) + (6 if condition == "empty" else 0)):
        _distractor(rng, draw, width, height)
    if condition == "empty":
        count = 0
    elif condition == "crowded":
        count = rng.randint(12, 20)
    else:
        count = rng.randint(2, 9)
    small = condition == "small"
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    weights = [TAIL_WEIGHTS[c] for c in CLASSES]
    for _ in range(count):
        label = rng.choices(CLASSES, weights)[0] if tail else rng.choice(CLASSES)
        if small:
            unit = rng.randint(max(5, width // 60), max(7, width // 36))
        else:
            unit = rng.randint(max(8, width // 40), max(12, width // 14))
        across = SHAPES[label][0]
        if across * unit >= width - 10:
            unit = (width - 10) // (across + 1)
        x = rng.randint(0, max(1, width - across * unit - 1))
        y = rng.randint(0, max(1, height - int(3.5 * unit) - 1))
        placed.append((label, _draw_object(rng, draw, label, x, y, unit)))
    if condition == "dim":  # low light: dark, flat, and the sensor's noise on top
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.25, 0.4) + rng.uniform(5, 20)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.8)))
    if condition == "dim" or rng.random() < 0.35:
        sigma = rng.uniform(4, 14)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, (height, width, 3))
        pixels = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    boxes = []
    for i, (label, (x1, y1, x2, y2)) in enumerate(placed):
        later = [b for _l, b in placed[i + 1 :]]
        area = max(1, (x2 - x1) * (y2 - y1))
        covered = max((_overlap((x1, y1, x2, y2), b) for b in later), default=0) / area
        if covered > 0.85:  # hidden almost entirely: not labelled, as a person would not see it
            continue
        boxes.append(DemoBox(label, max(0, x1), max(0, y1), min(width, x2), min(height, y2), covered > 0.2))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rng.randint(80, 95))
    return out.getvalue(), boxes


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def voc_xml(name: str, width: int, height: int, boxes: list[DemoBox], scores: list[float] | None = None) -> bytes:
    objects = "".join(
        f"<object><name>{escape(b.label)}</name>"
        + (f"<score>{scores[i]:.3f}</score>" if scores else "")
        + "<difficult>0</difficult><truncated>0</truncated>"
        f"<occluded>{int(b.occluded)}</occluded>"
        f"<bndbox><xmin>{b.x1}</xmin><ymin>{b.y1}</ymin><xmax>{b.x2}</xmax><ymax>{b.y2}</ymax></bndbox></object>"
        for i, b in enumerate(boxes)
    )
    return (
        f"<annotation><filename>{escape(name)}</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objects}</annotation>"
    ).encode()


def generate(
    count: int,
    seed: int,
    width: int = 640,
    height: int = 480,
    start: int = 0,
    scene: str = "lab",
    tail: bool = False,
) -> Iterator[tuple[str, bytes, list[DemoBox]]]:
    for index in range(start, start + count):
        data, boxes = make_image(seed, index, width, height, scene, tail)
        yield f"lego_{seed}_{index:05d}.jpg", data, boxes


def write_voc_zip(
    path: Path,
    count: int,
    seed: int,
    width: int = 640,
    height: int = 480,
    start: int = 0,
    with_gt: bool = True,
    scene: str = "lab",
    tail: bool = False,
) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data, boxes in generate(count, seed, width, height, start, scene, tail):
            archive.writestr(f"images/{name}", data)
            if with_gt:
                archive.writestr(f"gt/{Path(name).stem}.xml", voc_xml(name, width, height, boxes))
    return path


def write_voc_zip_with_pred(path: Path, count: int, seed: int, width: int = 320, height: int = 240) -> Path:
    """Ground truth plus 'predictions' (the truth, jittered, with scores), for tests of prediction layers."""
    rng = random.Random(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, boxes in generate(count, seed, width, height):
            archive.writestr(f"images/{name}", data)
            archive.writestr(f"gt/{Path(name).stem}.xml", voc_xml(name, width, height, boxes))
            jittered = [DemoBox(b.label, b.x1 + rng.randint(-2, 2), b.y1, b.x2, b.y2, b.occluded) for b in boxes]
            scores = [rng.uniform(0.05, 1.0) for _ in jittered]
            archive.writestr(f"pred/{Path(name).stem}.xml", voc_xml(name, width, height, jittered, scores))
    return path
