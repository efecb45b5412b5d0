"""Shapes: a procedural, labelled image set whose ground truth is known pixel by pixel.

Every image holds exactly one target shape (the label) on a smooth, noisy,
sometimes striped background, plus optional clutter (line segments, scribbles,
small irregular blobs) that is never a shape of any class and never enters the
target's box. Each sample comes with the target's mask and tight box, so an
explanation can be scored against where the evidence really is.

A sample depends only on (seed, index): its RNG is seeded from both, so the
pixels do not depend on `n`, on worker order or on what was drawn before.
Targets are drawn at 4x resolution and box-filtered down (anti-aliased edges);
the mask is the set of pixels the shape covers at least half of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ("circle", "ring", "square", "triangle", "star", "cross", "hexagon", "diamond")
# Per-channel statistics of ShapesDataset(10_000, seed=0), rounded; measured with `measure_stats()`.
MEAN = (0.497, 0.498, 0.499)
STD = (0.268, 0.269, 0.268)

SUPERSAMPLE = 4
RADIUS = (0.21, 0.34)  # target circumradius, as a fraction of the image side
MIN_CONTRAST = 0.4  # RGB distance between the target's colour and the background under it
MAX_CLUTTER = 4


@dataclass
class ShapeSample:
    """One image with its ground truth: `mask` is the target's pixels, `box` = (x0, y0, x1, y1), end exclusive."""

    image: torch.Tensor
    label: int
    mask: torch.Tensor
    box: tuple[int, int, int, int]


# ----------------------------------------------------------------------------- geometry


def _regular(k: int, r: float, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(k) * (2 * math.pi / k)
    return np.stack([np.cos(t), np.sin(t)], 1) * r


def _outline(label: int, r: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons (centred at 0, unrotated) that make up the shape; the second one, if any, is a hole."""
    name = CLASSES[label]
    if name in ("circle", "ring"):
        outer = [_regular(96, r)]
        return outer + [_regular(96, r * rng.uniform(0.5, 0.62))] if name == "ring" else outer
    if name == "square":
        return [_regular(4, r, math.pi / 4)]
    if name == "triangle":
        return [_regular(3, r * 1.1)]  # a triangle covers the least of its circle: make it a little bigger
    if name == "hexagon":
        return [_regular(6, r)]
    if name == "star":
        radii = np.tile([r * 1.1, r * 1.1 * rng.uniform(0.4, 0.5)], 5)
        return [_regular(10, 1.0) * radii[:, None]]
    if name == "cross":
        w = r * rng.uniform(0.3, 0.38)
        q = np.array([[w, r], [w, w], [r, w]])
        arm = [q @ np.array([[c, s], [-s, c]]) for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1))]
        return [np.concatenate(arm)]
    if name == "diamond":  # a rhombus, not a rotated square: its aspect ratio tells it apart
        a = rng.uniform(0.5, 0.65)
        return [np.array([[0, r], [a * r, 0], [0, -r], [-a * r, 0]])]
    raise ValueError(name)


def _rotate(poly: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return poly @ np.array([[c, s], [-s, c]])


def _coverage(polys: list[np.ndarray], size: int) -> np.ndarray:
    """Fraction of each pixel the polygons cover (first filled, later ones cut out), float32 [size, size]."""
    ss = SUPERSAMPLE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(polys):
        draw.polygon([tuple(v) for v in (p * ss).tolist()], fill=0 if i else 255)
    return np.asarray(canvas.reduce(ss), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- layers


def _random_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field, sometimes with faint stripes, float32 [size, size, 3]."""
    grid = rng.uniform(0, 255, (3, 3, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size]
        t = rng.uniform(0, math.pi)
        wave = np.sin((xx * math.cos(t) + yy * math.sin(t)) * rng.uniform(0.6, 1.6) + rng.uniform(0, 6.3))
        bg = bg + (rng.uniform(0.04, 0.1) * wave)[..., None].astype(np.float32)
    return bg


def _target_colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour at least `MIN_CONTRAST` away from `under` (the background's mean below the target)."""
    for _ in range(32):
        c = rng.uniform(0, 1, 3)
        if np.linalg.norm(c - under) >= MIN_CONTRAST:
            return c.astype(np.float32)
    return np.where(under < 0.5, 1.0, 0.0).astype(np.float32)  # the far corner of the cube


def _clutter_item(size: int, rng: np.random.Generator) -> tuple[str, list[tuple[float, float]], int]:
    """A line, a zigzag or a small irregular blob: ("line" | "blob", points, width)."""
    kind = rng.choice(3)
    if kind == 2:
        r = rng.uniform(0.05, 0.09) * size
        c = rng.uniform(r, size - r, 2)
        k = int(rng.integers(5, 8))
        pts = c + _regular(k, 1.0, rng.uniform(0, 6.3)) * (r * rng.uniform(0.5, 1.0, k))[:, None]
        return "blob", [tuple(p) for p in pts.tolist()], 0
    n_pts = 2 if kind == 0 else int(rng.integers(3, 5))
    start = rng.uniform(0, size, 2)
    steps = rng.normal(0, size * 0.2, (n_pts - 1, 2))
    pts = np.clip(np.concatenate([start[None], start + np.cumsum(steps, 0)]), 0, size - 1)
    return "line", [tuple(p) for p in pts.tolist()], max(1, size // 32)


def _draw_clutter(bg: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw 0..MAX_CLUTTER items whose extent stays at least 1 px clear of the target's box."""
    size = bg.shape[0]
    img = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1
    for _ in range(int(rng.integers(0, MAX_CLUTTER + 1))):
        for _attempt in range(4):
            kind, pts, width = _clutter_item(size, rng)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            pad = width + 1
            if min(xs) - pad >= x1 or max(xs) + pad < x0 or min(ys) - pad >= y1 or max(ys) + pad < y0:
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                if kind == "blob":
                    draw.polygon(pts, fill=fill)
                else:
                    draw.line(pts, fill=fill, width=width)
                break
    return np.asarray(img, dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- one sample


def _label(seed: int, index: int) -> int:
    """Each run of len(CLASSES) consecutive indices holds every class once, in a shuffled order."""
    k = len(CLASSES)
    perm = np.random.default_rng([seed, index // k, 0x5A]).permutation(k)
    return int(perm[index % k])


def render(
    seed: int, index: int, size: int = 32, clutter: bool = True
) -> tuple[np.ndarray, int, np.ndarray, tuple[int, int, int, int]]:
    """Sample `index` of the set `seed`: (uint8 image [3, size, size], label, bool mask [size, size], box)."""
    if not 16 <= size <= 256:
        raise ValueError(f"size must be within 16..256, not {size}")
    rng = np.random.default_rng([seed, index])
    label = _label(seed, index)
    r = rng.uniform(*RADIUS) * size
    margin = r * 1.15 + 1
    centre = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)
    alpha = _coverage([_rotate(p, angle) + centre for p in _outline(label, r, rng)], size)
    mask = alpha >= 0.5
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    bg = _random_background(size, rng)
    if clutter:
        bg = _draw_clutter(bg, box, rng)
    colour = _target_colour(bg[mask].mean(0), rng)
    shade = 1.0 + rng.uniform(-0.15, 0.15) * (np.linspace(-1, 1, size, dtype=np.float32)[:, None])
    fg = np.clip(colour * shade[..., None], 0, 1)  # a faint vertical gradient across the target
    img = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), img.shape).astype(np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img.transpose(2, 0, 1), label, mask, box


# ----------------------------------------------------------------------------- the dataset


class ShapesDataset(torch.utils.data.Dataset):
    """`n` Shapes images of side `size`, rendered once in `__init__` (2-3k images/s on one core).

    Items are `(image, label)` with the image float32 [3, size, size] in [0, 1],
    not normalized (see `normalize`); `sample(i)` adds the mask and the box.
    The whole set is also there as tensors: `images` (uint8), `labels`,
    `masks` (bool) and `boxes` ([n, 4] int64).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, clutter: bool = True) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        self.n, self.seed, self.size, self.clutter = n, seed, size, clutter
        self.classes = CLASSES
        images = np.empty((n, 3, size, size), np.uint8)
        masks = np.empty((n, size, size), bool)
        labels = np.empty(n, np.int64)
        boxes = np.empty((n, 4), np.int64)
        for i in range(n):
            images[i], labels[i], masks[i], boxes[i] = render(seed, i, size, clutter)
        self.images = torch.from_numpy(images)
        self.masks = torch.from_numpy(masks)
        self.labels = torch.from_numpy(labels)
        self.boxes = torch.from_numpy(boxes)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0), int(self.labels[i])

    def normalized(self) -> torch.Tensor:
        """The whole set as one float batch, normalized as the models expect."""
        return normalize(self.images.float() / 255)

    def sample(self, i: int) -> ShapeSample:
        image, label = self[i]
        return ShapeSample(image, label, self.masks[i], tuple(int(v) for v in self.boxes[i]))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(images - MEAN) / STD over the channel axis, for [3, H, W] or [B, 3, H, W]; models always get this."""
    shape = (3, 1, 1)
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std


def measure_stats(n: int = 10_000, seed: int = 0, size: int = 32) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over `n` images: how `MEAN` and `STD` were obtained."""
    x = ShapesDataset(n, seed, size).images.float().div_(255.0)
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def shapes_data_config(size: int) -> dict[str, Any]:
    """What the checkpoint JSON tells `load_checkpoint` (and timm's eval transform) about the input."""
    return {"input_size": [3, size, size], "mean": list(MEAN), "std": list(STD), "crop_pct": 1.0,
            "interpolation": "bilinear"}
