"""Datasets by name and a device-resident loader with on-device shuffling and augmentation.

Every dataset builder returns `DatasetSplits`: normalised float tensors for train/val/test (on the
CPU; the env moves them to its device once) plus an optional training augmentation that runs on
the device with an explicit generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DatasetSplits", "DATASETS", "register_dataset", "build_dataset", "DeviceLoader",
           "random_crop_flip"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DatasetSplits:
    """Train/val/test tensors: x (N, C, H, W) float32, y (N,) int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: Optional[Augment] = None

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x.shape[1:])


DATASETS: Dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        DATASETS[name] = fn
        return fn

    return deco


def build_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0, **kwargs) -> DatasetSplits:
    """Build dataset `name`; `seed` fixes the split (and generated data)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name](data_dir=data_dir, seed=seed, **kwargs)


def _split(x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, seed: int):
    perm = np.random.default_rng(seed).permutation(len(x))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def _to_tensors(split):
    x, y = split
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


@register_dataset("digits")
def digits(data_dir: Optional[str] = None, seed: int = 0, n_val: int = 300,
           n_test: int = 300) -> DatasetSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

    Split 1197/300/300 with `seed`, scaled to [0, 1] and standardised with the training mean/std.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    train, val, test = _split(x, bunch.target.astype(np.int64), n_val, n_test, seed)
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
    """Generated, learnable data of any shape: per-class prototype images plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    protos = torch.randn((num_classes, *shape), generator=g)

    def draw(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return protos[y] + noise * torch.randn((n, *shape), generator=g), y

    (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(n_val), draw(n_test)
    aug = random_crop_flip(padding=max(1, shape[-1] // 8)) if len(shape) == 3 and shape[-1] > 1 else None
    return DatasetSplits("synthetic", tx, ty, vx, vy, sx, sy, num_classes, augment=aug)


def random_crop_flip(padding: int = 4, flip: bool = True) -> Augment:
    """Random crop (zero padding `padding`) and optional horizontal flip, batched on the device."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=gen, device=gen.device).to(x.device)
        xp = F.pad(x, (padding,) * 4)
        rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
        if flip:
            mask = (torch.rand(b, generator=gen, device=gen.device) < 0.5).to(x.device)
            out = torch.where(mask[:, None, None, None], out.flip(3), out)
        return out.contiguous()

    return augment


class DeviceLoader:
    """Yields fixed-size batches of tensors resident on one device, reshuffled every epoch.

    Shuffling and augmentation draw from one `torch.Generator` seeded by `reset(seed)`, so the
    data order is a pure function of the seed. The last partial batch of each epoch is dropped.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 augment: Optional[Augment] = None) -> None:
        if batch_size > len(x):
            raise ValueError(f"batch_size {batch_size} is larger than the training split ({len(x)} samples)")
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.device = x.device
        self.batches_per_epoch = len(x) // batch_size
        self.generator = torch.Generator(device="cpu")
        self.epoch = 0
        self.position = 0
        self._perm: Optional[torch.Tensor] = None

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))
        self.epoch, self.position, self._perm = 0, 0, None

    def next(self):
        """Return `(x (B, C, H, W), y (B,), idx (B,))` for the next batch."""
        if self._perm is None or self.position + self.batch_size > len(self.x):
            if self._perm is not None:
                self.epoch += 1
            self._perm = torch.randperm(len(self.x), generator=self.generator).to(self.device)
            self.position = 0
        idx = self._perm[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return x, self.y[idx], idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "position": self.position,
                "perm": None if self._perm is None else self._perm.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
