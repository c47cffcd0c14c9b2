"""The generated glyphs dataset: deterministic from its seed, disjoint splits, classes in groups."""

from __future__ import annotations

import pytest
import torch

from mtkd_env.data import build_dataset
from mtkd_env.data.glyphs import FONTS, GROUPS, render_templates
from mtkd_env.runtime.errors import ConfigError

SMALL = dict(n_train=200, n_val=100, n_test=300, size=12)


def test_same_seed_same_tensors_and_another_seed_other_images():
    a = build_dataset("glyphs", seed=3, **SMALL)
    b = build_dataset("glyphs", seed=3, **SMALL)
    c = build_dataset("glyphs", seed=4, **SMALL)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, f"{split}_x"), getattr(b, f"{split}_x"))
        assert torch.equal(getattr(a, f"{split}_y"), getattr(b, f"{split}_y"))
    assert not torch.equal(a.train_x, c.train_x)


def test_shapes_classes_groups_and_balance():
    s = build_dataset("glyphs", seed=0, **SMALL)
    assert s.input_shape == (3, 12, 12) and s.num_classes == sum(len(g) for g in GROUPS) == 20
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (200, 100, 300)
    assert sorted(c for g in s.class_groups for c in g) == list(range(20))
    counts = torch.bincount(s.test_y, minlength=20)
    assert counts.min() == counts.max() == 15  # balanced: 300 images over 20 classes
    assert torch.isfinite(s.train_x).all()
    # standardised with the training statistics
    assert s.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_splits_share_no_image():
    s = build_dataset("glyphs", seed=0, **SMALL)
    rows = {split: {tuple(x.flatten().tolist()) for x in getattr(s, f"{split}_x")} for split in ("train", "val", "test")}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_a_split_does_not_depend_on_the_sizes_of_later_splits():
    a = build_dataset("glyphs", seed=1, n_train=50, n_val=20, n_test=30, size=8)
    b = build_dataset("glyphs", seed=1, n_train=50, n_val=20, n_test=90, size=8)
    assert torch.equal(a.val_x, b.val_x)


def test_every_font_draws_every_class():
    ink = render_templates()
    assert ink.shape[:3] == (len(FONTS), 2, 20)
    assert (ink[:, 0].sum(dim=(2, 3)) > 10).all()  # no missing glyph box-less blanks


@pytest.mark.parametrize("kwargs, message", [
    ({"n_test": 0}, "n_test must be an integer >= 1"),
    ({"size": 2}, "size must be an integer >= 4"),
    ({"noise": 2.0}, "noise must be a number in [0, 1]"),
    ({"fonts": 3}, "unknown option(s) ['fonts']"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=None) as info:
        build_dataset("glyphs", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
