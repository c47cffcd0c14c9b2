"""`scenes` and `scene_boxes`: embedded, generated scenes of shapes with per-pixel masks and boxes.

Each image (3, size, size) holds 1 to `max_objects` shapes of 4 kinds (disc, square, triangle,
ring), each at a random position, size and rotation, in a random colour (so the colour never
tells the kind: the shape does), over a background of random colour with a linear gradient and
pixel noise; later shapes occlude earlier ones. Everything is a pure function of the seed, built
in well under a second on one core, no download.

- `scenes` (segmentation): masks (N, size, size) int64, 0 = background, 1..4 = the kinds;
- `scene_boxes` (detection): targets (N, max_objects, 5) float32, one row per visible object
  `[label, x1, y1, x2, y2]` (label 0..3 = the kinds, box = the tight box of its visible pixels, in
  pixels, x2/y2 exclusive), rows of label -1 after the last object (padding).
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import torch

from ..runtime.errors import ConfigError
from .tensor_data import DatasetSplits

__all__ = ["KINDS", "draw_scenes", "scenes", "scene_boxes"]

KINDS: Tuple[str, ...] = ("disc", "square", "triangle", "ring")
"""The shape kinds, in label order (segmentation ids 1..4, detection labels 0..3)."""

_MIN_PIXELS = 4  # an object with fewer visible pixels is not a detection target


def _inside(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Membership (n, S, S) of the pixels at object coordinates (u, v) (n, S, S) in shape `kind` (n,)
    of radius r (n,)."""
    r = r[:, None, None]
    d2 = u * u + v * v
    disc = d2 <= r * r
    square = torch.maximum(u.abs(), v.abs()) <= 0.8 * r
    # Equilateral triangle with circumradius r: three half-planes at 120 degrees.
    tri = torch.ones_like(disc)
    for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
        tri &= (u * math.cos(a) + v * math.sin(a)) <= 0.5 * r
    ring = disc & (d2 >= (0.55 * r) ** 2)
    k = kind[:, None, None]
    return torch.where(k == 0, disc, torch.where(k == 1, square, torch.where(k == 2, tri, ring)))


def draw_scenes(n: int, size: int, max_objects: int, g: torch.Generator, noise: float):
    """n images (n, 3, S, S) in [0, 1], masks (n, S, S) int64 and box targets (n, max_objects, 5)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords[None, :, None].expand(n, size, size), coords[None, None, :].expand(n, size, size)
    bg = torch.rand(n, 3, 1, 1, generator=g)
    tilt = (torch.rand(n, 3, 2, generator=g) - 0.5) * 0.4
    img = bg + tilt[..., 0, None, None] * (xx[:, None] / size - 0.5) + tilt[..., 1, None, None] * (yy[:, None] / size - 0.5)
    mask = torch.zeros(n, size, size, dtype=torch.int64)
    instance = torch.full((n, size, size), -1, dtype=torch.int64)
    count = torch.randint(1, max_objects + 1, (n,), generator=g)
    kinds = torch.randint(0, len(KINDS), (n, max_objects), generator=g)
    for k in range(max_objects):
        active = (count > k)[:, None, None]
        r = size * (0.14 + 0.14 * torch.rand(n, generator=g))
        cx = r + (size - 2 * r) * torch.rand(n, generator=g)
        cy = r + (size - 2 * r) * torch.rand(n, generator=g)
        angle = 2 * math.pi * torch.rand(n, generator=g)
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        inside = _inside(kinds[:, k], cos * dx + sin * dy, -sin * dx + cos * dy, r) & active
        # A colour far enough from the background's that the shape stays visible.
        colour = (bg + (0.3 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)) * torch.sign(0.5 - bg.mean(1, keepdim=True))
                  + 0.25 * torch.randn(n, 3, 1, 1, generator=g)).clamp(0, 1)
        img = torch.where(inside[:, None], colour, img)
        mask = torch.where(inside, kinds[:, k, None, None] + 1, mask)
        instance = torch.where(inside, torch.full_like(instance, k), instance)
    img = (img + noise * torch.randn(img.shape, generator=g)).clamp(0, 1)
    boxes = torch.full((n, max_objects, 5), -1.0)
    for i in range(n):
        row = 0
        for k in range(int(count[i])):
            ys, xs = torch.nonzero(instance[i] == k, as_tuple=True)
            if len(ys) < _MIN_PIXELS:
                continue
            boxes[i, row] = torch.tensor([float(kinds[i, k]), xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            row += 1
    return img, mask, boxes


@functools.lru_cache(maxsize=4)
def _build(seed: int, size: int, n_train: int, n_val: int, n_test: int, max_objects: int, noise: float):
    g = torch.Generator().manual_seed(seed)
    # One generator, splits drawn in a fixed order (as glyphs): no image is in two splits.
    splits = [draw_scenes(n, size, max_objects, g, noise) for n in (n_train, n_val, n_test)]
    x = splits[0][0]
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return tuple(((img - mean) / std, mask, boxes) for img, mask, boxes in splits)


def _check(size, n_train, n_val, n_test, max_objects, noise) -> None:
    for key, value, low in (("size", size, 8), ("n_train", n_train, 1), ("n_val", n_val, 1), ("n_test", n_test, 1),
                            ("max_objects", max_objects, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"scenes: {key} must be an integer >= {low}, got {value!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise <= 1:
        raise ConfigError(f"scenes: noise must be a number in [0, 1], got {noise!r}")


def scenes(data_dir=None, seed: int = 0, size: int = 32, n_train: int = 768, n_val: int = 256, n_test: int = 512,
           max_objects: int = 3, noise: float = 0.06) -> DatasetSplits:
    """Generated scenes (3, size, size) with masks (size, size): 5 classes (background + `KINDS`)."""
    _check(size, n_train, n_val, n_test, max_objects, noise)
    (tx, tm, _), (vx, vm, _), (sx, sm, _) = _build(int(seed), size, n_train, n_val, n_test, max_objects, float(noise))
    return DatasetSplits("scenes", tx, tm, vx, vm, sx, sm, 1 + len(KINDS), task="segmentation")


def scene_boxes(data_dir=None, seed: int = 0, size: int = 32, n_train: int = 768, n_val: int = 256,
                n_test: int = 512, max_objects: int = 3, noise: float = 0.06) -> DatasetSplits:
    """The same scenes with box targets (max_objects, 5): 4 classes (`KINDS`), see the module docstring."""
    _check(size, n_train, n_val, n_test, max_objects, noise)
    (tx, _, tb), (vx, _, vb), (sx, _, sb) = _build(int(seed), size, n_train, n_val, n_test, max_objects, float(noise))
    return DatasetSplits("scene_boxes", tx, tb, vx, vb, sx, sb, len(KINDS), task="detection")
