"""Datasets by name and a device-resident loader with on-device shuffling and augmentation.

Every in-memory dataset builder (digits, synthetic, cifar100) returns `DatasetSplits`: normalised
float tensors for train/val/test (on the CPU; the env moves them to its device once) plus an
optional training augmentation that runs on the device with an explicit generator. Datasets too
large for device memory (imagefolder, see `mtkd_env.disk_data`) return `StreamingSplits`, which
offers the same two entry points: `train_loader(...)` and `eval_set(...)`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DatasetSplits", "DATASETS", "register_dataset", "build_dataset", "DeviceLoader",
           "random_crop_flip", "TensorEvalSet"]

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

    def train_loader(self, batch_size: int, augment: bool, device: torch.device,
                     labels: Optional[torch.Tensor] = None, rank: int = 0, world_size: int = 1) -> "DeviceLoader":
        """A `DeviceLoader` over the training split on `device` (`labels` replaces train_y, e.g.
        corrupted labels of a noisy teacher; `rank`/`world_size` shard each global batch)."""
        y = self.train_y if labels is None else labels
        return DeviceLoader(self.train_x.to(device), y.to(device), batch_size,
                            self.augment if augment else None, rank=rank, world_size=world_size)

    def eval_set(self, split: str, device: torch.device) -> "TensorEvalSet":
        """The "val" or "test" split as device tensors."""
        if split not in ("val", "test"):
            raise ValueError(f"split: expected 'val' or 'test', got {split!r}")
        return TensorEvalSet(getattr(self, f"{split}_x").to(device), getattr(self, f"{split}_y").to(device))


class TensorEvalSet:
    """An evaluation split held in device memory: x (N, ...), y (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first `n` samples (views)."""
        return self.x[:n], self.y[:n]

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(x (b, ...), y (b,)) in order; the last batch may be smaller."""
        for i in range(0, len(self.y), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


DATASETS: Dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        DATASETS[name] = fn
        return fn

    return deco


def build_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0, **kwargs) -> DatasetSplits:
    """Build dataset `name`; `seed` fixes the split (and generated data). Unknown options raise
    a `ValueError` listing the dataset's options."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    builder = DATASETS[name]
    options = [p for p in inspect.signature(builder).parameters if p not in ("data_dir", "seed")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown option(s) {unknown} in dataset_kwargs; expected some of "
                         f"{options}")
    return builder(data_dir=data_dir, seed=seed, **kwargs)


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
    """Generated, learnable data of any shape: per-class prototype tensors plus Gaussian noise.

    Any `shape` (e.g. (3, 32, 32) for CIFAR-sized benchmarks, (3, 224, 224), or (16,) for
    vectors) and any `num_classes` >= 2; image shapes get a random crop + flip augmentation.
    """
    shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
        raise ValueError(f"synthetic: shape must be a list of positive integers such as [3, 32, 32], got {shape!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"synthetic: num_classes must be an integer >= 2, got {num_classes!r}")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"synthetic: {key} must be an integer >= 1, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn((num_classes, *shape), generator=g)

    def draw(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return protos[y] + noise * torch.randn((n, *shape), generator=g), y

    (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(n_val), draw(n_test)
    aug = random_crop_flip(padding=max(1, shape[-1] // 8)) if len(shape) == 3 and shape[-1] > 1 else None
    return DatasetSplits("synthetic", tx, ty, vx, vy, sx, sy, num_classes, augment=aug)


def random_crop_flip(padding: int = 4, flip: bool = True, fill: Optional[Sequence[float]] = None) -> Augment:
    """Random crop (padding `padding`) and optional horizontal flip, batched on the device.

    The padding value is 0, or per channel `fill` (C,): pass the normalised value of a black pixel
    to match torchvision's `RandomCrop(padding=...)` applied before normalisation.
    """

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=gen, device=gen.device).to(x.device)
        if fill is None:
            xp = F.pad(x, (padding,) * 4)
        else:
            f = torch.as_tensor(fill, dtype=x.dtype, device=x.device)[:, None, None]
            xp = F.pad(x - f, (padding,) * 4) + f
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

    The permutation is drawn from a generator seeded by `reset(seed)`, so the data order is a pure
    function of the seed; augmentation draws from a second generator (per rank). The last partial
    batch of each epoch is dropped. Under torch.distributed, `batch_size` is the global batch and
    rank r of W gets rows [r*B/W, (r+1)*B/W) of every global batch: disjoint shards, the same
    samples as one process.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 augment: Optional[Augment] = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size > len(x):
            raise ValueError(f"batch_size {batch_size} is larger than the training split ({len(x)} samples)")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be divisible by the world size "
                             f"{world_size}")
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.rank, self.world_size, self.local_batch = rank, world_size, batch_size // world_size
        self.device = x.device
        self.batches_per_epoch = len(x) // batch_size
        self.generator = torch.Generator(device="cpu")
        self.aug_generator = torch.Generator(device="cpu")
        self.epoch = 0
        self.position = 0
        self._perm: Optional[torch.Tensor] = None
        self._perm_cpu: Optional[torch.Tensor] = None

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))
        self.aug_generator.manual_seed(int(seed) * 7919 + 104729 * (self.rank + 1))
        self.epoch, self.position, self._perm = 0, 0, None

    def next(self):
        """Return `(x (b, C, H, W), y (b,), idx (b,))`, b = batch_size / world_size."""
        if self._perm is None or self.position + self.batch_size > len(self.x):
            if self._perm is not None:
                self.epoch += 1
            self._perm_cpu = torch.randperm(len(self.x), generator=self.generator)
            self._perm = self._perm_cpu.to(self.device)
            self.position = 0
        start = self.position + self.rank * self.local_batch
        idx = self._perm[start:start + self.local_batch]
        self.position += self.batch_size
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, self.aug_generator)
        return x, self.y[idx], idx

    def state_dict(self) -> dict:
        # The host copy of the permutation avoids a device->host sync on every call.
        return {"generator": self.generator.get_state(), "aug_generator": self.aug_generator.get_state(),
                "epoch": self.epoch, "position": self.position,
                "perm": None if self._perm is None else self._perm_cpu}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.aug_generator.set_state(state["aug_generator"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm_cpu = state["perm"]
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)


# On-disk datasets (cifar100, imagefolder) register themselves on import.
from . import disk_data  # noqa: E402,F401
