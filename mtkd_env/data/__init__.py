"""Datasets by name: the registry, `build_dataset`, and the embedded datasets (digits, synthetic;
glyphs in `mtkd_env.data.glyphs`).

Every in-memory dataset builder (digits, synthetic, cifar100) returns `DatasetSplits`
(`mtkd_env.data.tensor_data`): normalised float tensors for train/val/test (on the CPU; the env moves
them to its device once) plus an optional training augmentation that runs on the device with an
explicit generator. Datasets too large for device memory (imagefolder, see `mtkd_env.data.disk_data`)
return `StreamingSplits`, which offers the same two entry points: `train_loader(...)` and
`eval_set(...)`.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from . import dense_disk, disk_data, glyphs, scenes
from ..protocols import Splits
from ..runtime.errors import ConfigError, did_you_mean, unknown_name
from .tensor_data import DatasetSplits, DeviceLoader, TensorEvalSet, random_crop_flip

__all__ = ["DatasetSplits", "DATASETS", "register_dataset", "build_dataset", "DeviceLoader",
           "random_crop_flip", "TensorEvalSet"]


DATASETS: Dict[str, Callable[..., Splits]] = {}
"""Dataset name -> builder `f(data_dir, seed, **options)`; in-memory builders return `DatasetSplits`,
streamed ones `mtkd_env.data.disk_data.StreamingSplits`."""


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        DATASETS[name] = fn
        return fn

    return deco


def build_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0, **kwargs) -> Splits:
    """Build dataset `name`; `seed` fixes the split (and generated data). Unknown options raise
    a `ConfigError` listing the dataset's options."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    builder = DATASETS[name]
    options = [p for p in inspect.signature(builder).parameters if p not in ("data_dir", "seed")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"dataset {name!r}: unknown option(s) {unknown} in dataset_kwargs{did_you_mean(unknown, options)}; "
                          f"expected some of {options}")
    return builder(data_dir=data_dir, seed=seed, **kwargs)


def _split(x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, seed: int):
    perm = np.random.default_rng(seed).permutation(len(x))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def _to_tensors(split):
    x, y = split
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _digits_table():
    """(pixels (1797, 64) float64, labels (1797,)): scikit-learn's bundled digits table, read as
    `sklearn.datasets.load_digits` reads it but without importing scikit-learn, whose import costs
    seconds in every process that builds the env (through `load_digits` when the file moved)."""
    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


@register_dataset("digits")
def digits(data_dir: Optional[str] = None, seed: int = 0, n_val: int = 300,
           n_test: int = 300) -> DatasetSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

    Split 1197/300/300 with `seed`, scaled to [0, 1] and standardised with the training mean/std.
    """
    pixels, labels = _digits_table()
    x = (pixels.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    train, val, test = _split(x, labels.astype(np.int64), n_val, n_test, seed)
    mean, std = float(train[0].mean()), float(train[0].std())
    norm = [((s[0] - mean) / std, s[1]) for s in (train, val, test)]
    tx, ty = _to_tensors(norm[0])
    vx, vy = _to_tensors(norm[1])
    sx, sy = _to_tensors(norm[2])
    return DatasetSplits("digits", tx, ty, vx, vy, sx, sy, 10,
                         augment=random_crop_flip(padding=1, flip=False))


@register_dataset("synthetic")
def synthetic(data_dir: Optional[str] = None, seed: int = 0, shape: tuple = (3, 32, 32),
              num_classes: int = 10, n_train: int = 512, n_val: int = 128, n_test: int = 128,
              noise: float = 1.0) -> DatasetSplits:
    """Generated, learnable data of any shape: per-class prototype tensors plus Gaussian noise.

    Any `shape` (e.g. (3, 32, 32) for CIFAR-sized benchmarks, (3, 224, 224), or (16,) for
    vectors) and any `num_classes` >= 2; image shapes get a random crop + flip augmentation.
    """
    shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
        raise ConfigError(f"synthetic: shape must be a list of positive integers such as [3, 32, 32], got {shape!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"synthetic: num_classes must be an integer >= 2, got {num_classes!r}")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"synthetic: {key} must be an integer >= 1, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn((num_classes, *shape), generator=g)

    def draw(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return protos[y] + noise * torch.randn((n, *shape), generator=g), y

    (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(n_val), draw(n_test)
    aug = random_crop_flip(padding=max(1, shape[-1] // 8)) if len(shape) == 3 and shape[-1] > 1 else None
    return DatasetSplits("synthetic", tx, ty, vx, vy, sx, sy, num_classes, augment=aug)


register_dataset("glyphs")(glyphs.glyphs)
register_dataset("scenes")(scenes.scenes)
register_dataset("scene_boxes")(scenes.scene_boxes)
register_dataset("cityscapes")(dense_disk.cityscapes)
register_dataset("segfolder")(dense_disk.segfolder)
register_dataset("coco")(dense_disk.coco)
register_dataset("cifar100")(disk_data.cifar100)
register_dataset("imagefolder")(disk_data.imagefolder)
