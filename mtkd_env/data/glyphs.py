"""`glyphs`: an embedded, generated image dataset with a large test split and classes in groups.

Characters rendered from the fonts that matplotlib ships (DejaVu Sans / Sans Mono / Serif and STIX
General, each in four styles: 16 fonts), then drawn into small colour images under a random affine
map (rotation, anisotropic scale, shear, translation), a random stroke width, random foreground and
background colours, a second, fainter glyph as clutter, and pixel noise. No download: everything is
a pure function of the seed, built in about a second on one core (and kept per process, so a pool
of teachers and its students build it once).

The 20 classes come in 4 groups of 5 (digits, upper-case Latin, lower-case Latin, lower-case Greek;
`DatasetSplits.class_groups`), which the `specialists` scenario gives one expert teacher each.
The splits are drawn independently from the same distribution: a small training split (the one
every RL episode trains a student on), and large validation and test splits, so that the test
accuracy of one student has a binomial sd of about sqrt(0.2 * 0.8 / 10,000) = 0.4 pp and two
students that disagree on a fraction d of the images differ by about sqrt(d / n) from the split alone.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.errors import ConfigError
from .tensor_data import DatasetSplits, random_crop_flip

__all__ = ["GROUPS", "FONTS", "glyphs", "render_templates"]

GROUPS: Tuple[str, ...] = ("02345", "ABDEH", "abdeg", "αβγδλ")
"""The classes, one string per group: class k is the k-th character of their concatenation."""

FONTS: Tuple[str, ...] = tuple(
    f"{family}{style}.ttf"
    for family, styles in (("DejaVuSans", ("", "-Bold", "-Oblique", "-BoldOblique")),
                           ("DejaVuSansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
                           ("DejaVuSerif", ("", "-Bold", "-Italic", "-BoldItalic")),
                           ("STIXGeneral", ("", "Bol", "Italic", "BolIta")))
    for style in styles)
"""The matplotlib font files the glyphs are drawn from."""

_CANVAS = 32  # template resolution: glyphs are rendered once at this size, then warped down


@functools.lru_cache(maxsize=1)
def render_templates() -> torch.Tensor:
    """Every class in every font as a centred (32, 32) ink map in [0, 1], in two stroke widths
    (as drawn, and thick = 3x3 dilation): (F, 2, K, 32, 32), F fonts, K classes."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    chars = "".join(GROUPS)
    out = np.zeros((len(FONTS), len(chars), _CANVAS, _CANVAS), dtype=np.float32)
    for f, name in enumerate(FONTS):
        font = FT2Font(os.path.join(font_dir, name))
        for k, ch in enumerate(chars):
            font.set_size(24, 72)
            font.set_text(ch)
            font.draw_glyphs_to_bitmap(antialiased=True)
            img = np.asarray(font.get_image(), dtype=np.float32)[:_CANVAS, :_CANVAS] / 255.0
            h, w = img.shape
            top, left = (_CANVAS - h) // 2, (_CANVAS - w) // 2
            out[f, k, top:top + h, left:left + w] = img
    ink = torch.from_numpy(out)
    flat = ink.reshape(-1, 1, _CANVAS, _CANVAS)
    thick = F.max_pool2d(flat, 3, 1, 1).view_as(ink)
    return torch.stack([ink, thick], dim=1)


def _warp(templates: torch.Tensor, font: torch.Tensor, stroke: torch.Tensor, cls: torch.Tensor, size: int,
          g: torch.Generator, rotate: float, shift: float) -> torch.Tensor:
    """Ink maps (n, 1, size, size) of the given (font, stroke, class) under random affine maps."""
    n = len(cls)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    angle = u(-rotate, rotate) * math.pi / 180
    scale_x, scale_y = u(0.8, 1.25), u(0.8, 1.25)  # >1 zooms out: the inverse map of affine_grid
    shear = u(-0.3, 0.3)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * scale_x, (-sin + shear) * scale_y, u(-shift, shift)], 1),
                         torch.stack([sin * scale_x, cos * scale_y, u(-shift, shift)], 1)], 1)  # (n, 2, 3)
    src = templates[font, stroke, cls][:, None]  # (n, 1, 32, 32)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _draw(n: int, num_classes: int, size: int, g: torch.Generator, noise: float, clutter: float):
    """n images (n, 3, size, size) in [0, 1] and their labels (n,), balanced over classes."""
    templates = render_templates()
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    nf = templates.shape[0]
    ink = _warp(templates, torch.randint(0, nf, (n,), generator=g), torch.randint(0, 2, (n,), generator=g), y,
                size, g, rotate=25.0, shift=0.15)
    other = torch.randint(0, num_classes, (n,), generator=g)
    ghost = _warp(templates, torch.randint(0, nf, (n,), generator=g), torch.randint(0, 2, (n,), generator=g), other,
                  size, g, rotate=180.0, shift=0.6)
    ghost = ghost * clutter * torch.rand(n, 1, 1, 1, generator=g)
    bg = torch.rand(n, 3, 1, 1, generator=g)
    # Foreground far enough from the background in every channel's mean that the glyph stays visible.
    fg = (bg + (0.35 + 0.65 * torch.rand(n, 1, 1, 1, generator=g)) * torch.sign(0.5 - bg.mean(1, keepdim=True))
          + 0.2 * torch.randn(n, 3, 1, 1, generator=g)).clamp(0, 1)
    clutter_colour = torch.rand(n, 3, 1, 1, generator=g)
    img = bg * (1 - ghost) + clutter_colour * ghost
    img = img * (1 - ink) + fg * ink
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1), y


@functools.lru_cache(maxsize=4)
def _build(seed: int, size: int, n_train: int, n_val: int, n_test: int, noise: float, clutter: float):
    g = torch.Generator().manual_seed(seed)
    num_classes = sum(len(s) for s in GROUPS)
    # One generator, splits drawn in a fixed order: a split's images do not depend on the sizes of
    # the splits drawn after it, and no image is in two splits (they are separate draws).
    train = _draw(n_train, num_classes, size, g, noise, clutter)
    val = _draw(n_val, num_classes, size, g, noise, clutter)
    test = _draw(n_test, num_classes, size, g, noise, clutter)
    mean, std = train[0].mean(dim=(0, 2, 3), keepdim=True), train[0].std(dim=(0, 2, 3), keepdim=True)
    return tuple(((x - mean) / std, y) for x, y in (train, val, test))


def glyphs(data_dir=None, seed: int = 0, size: int = 16, n_train: int = 2000, n_val: int = 2000,
           n_test: int = 10000, noise: float = 0.08, clutter: float = 0.6) -> DatasetSplits:
    """Generated glyph images (3, size, size), 20 classes in 4 groups; see the module docstring.

    `seed` fixes every image; `noise` is the sd of the pixel noise and `clutter` the largest
    opacity of the distractor glyph. The training split keeps `n_train` images (the cost of an
    episode), validation and test `n_val` / `n_test` (their power).
    """
    for key, value in (("size", size), ("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (4 if key == "size" else 1):
            raise ConfigError(f"glyphs: {key} must be an integer >= {4 if key == 'size' else 1}, got {value!r}")
    for key, value in (("noise", noise), ("clutter", clutter)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"glyphs: {key} must be a number in [0, 1], got {value!r}")
    (tx, ty), (vx, vy), (sx, sy) = _build(int(seed), size, n_train, n_val, n_test, float(noise), float(clutter))
    groups = []
    start = 0
    for chars in GROUPS:
        groups.append(list(range(start, start + len(chars))))
        start += len(chars)
    return DatasetSplits("glyphs", tx, ty, vx, vy, sx, sy, start,
                         augment=random_crop_flip(padding=max(1, size // 8), flip=False), class_groups=groups)
