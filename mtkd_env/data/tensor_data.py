"""In-memory data: train/val/test tensors, their evaluation sets, the device-resident training
loader with on-device shuffling, and batched on-device augmentation.

`DatasetSplits` is what every in-memory dataset builder of `mtkd_env.data` returns (normalised
float tensors on the CPU; the env moves them to its device once); `mtkd_env.data.disk_data` streams the
datasets too large for device memory behind the same two entry points, `train_loader(...)` and
`eval_set(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..runtime.errors import ConfigError

__all__ = ["DatasetSplits", "TensorEvalSet", "DeviceLoader", "random_crop_flip", "Augment", "check_batch_size",
           "to_device"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DatasetSplits:
    """Train/val/test tensors: x (N, C, H, W) float32, y (N,) int64 (dense tasks: masks or boxes, `task`)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: Optional[Augment] = None
    class_groups: Optional[List[List[int]]] = None
    """Classes in groups (lists of class indices), for datasets that define them (glyphs):
    what a group specialist teacher is trained on."""
    task: str = "classification"
    """The task the targets are for (`mtkd_env.tasks`): "classification" (y (N,) labels),
    "segmentation" (masks (N, H, W)) or "detection" (boxes (N, K, 5))."""

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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory, asynchronously, so that the
    training step never waits for the host (a pageable copy synchronises the stream)."""
    if t.device == device or device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(padding: int = 4, flip: bool = True, fill: Optional[Sequence[float]] = None) -> Augment:
    """Random crop (padding `padding`) and optional horizontal flip, batched on the device.

    The padding value is 0, or per channel `fill` (C,): pass the normalised value of a black pixel
    to match torchvision's `RandomCrop(padding=...)` applied before normalisation.
    """

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        off = to_device(torch.randint(0, 2 * padding + 1, (2, b), generator=gen, device=gen.device), x.device)
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
            mask = to_device(torch.rand(b, generator=gen, device=gen.device) < 0.5, x.device)
            out = torch.where(mask[:, None, None, None], out.flip(3), out)
        return out.contiguous()

    return augment


def check_batch_size(batch_size: int, n_samples: int, world_size: int) -> None:
    """A training loader's global batch must fit the split and split evenly over the ranks."""
    if batch_size > n_samples:
        raise ConfigError(f"batch_size {batch_size} is larger than the training split ({n_samples} samples)")
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} (the global batch) must be divisible by the world size "
                          f"{world_size}")


class DeviceLoader:
    """Yields fixed-size batches of tensors resident on one device, reshuffled every epoch.

    The permutation is drawn from a generator seeded by `reset(seed)`, so the data order is a pure
    function of the seed; augmentation draws from a second generator (per rank). The last partial
    batch of each epoch is dropped. Under torch.distributed, `batch_size` is the global batch and
    rank r of W gets rows [r*B/W, (r+1)*B/W) of every global batch: disjoint shards, the same
    samples as one process.

    With fixed views (`fix_views`, `EnvConfig.teacher_views`) each drawn image is replaced by one
    of its V views, chosen with the augmentation generator, and the returned index is the view's
    row in `rows()` (image i's view v is row i*V + v).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 augment: Optional[Augment] = None, rank: int = 0, world_size: int = 1,
                 views: Optional[torch.Tensor] = None) -> None:
        check_batch_size(batch_size, len(x), world_size)
        self.x, self.y, self.batch_size, self.augment = x, y, batch_size, augment
        self.views = views
        """(N*V, C, H, W): V fixed augmented views of every image (`fix_views`), or None."""
        self.rank, self.world_size, self.local_batch = rank, world_size, batch_size // world_size
        self.device = x.device
        self.batches_per_epoch = len(x) // batch_size
        self.generator = torch.Generator(device="cpu")
        self.aug_generator = torch.Generator(device="cpu")
        self.epoch = 0
        self.position = 0
        self._perm: Optional[torch.Tensor] = None
        self._perm_cpu: Optional[torch.Tensor] = None

    @property
    def num_views(self) -> int:
        """V: fixed views per image, 0 without them."""
        return 0 if self.views is None else len(self.views) // len(self.x)

    def fix_views(self, num_views: int, seed: int) -> None:
        """Draw `num_views` (V >= 1) augmented views of every image once, from a generator seeded
        `seed` (the same on every rank and in every episode); `next` then serves only these."""
        if self.augment is None:
            raise ConfigError("teacher_views: fixes augmented views, but this dataset has no training augmentation")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.views = torch.stack([self.augment(self.x, gen) for _ in range(num_views)], dim=1).flatten(0, 1)

    def rows(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The rows that `next`'s indices refer to: x (R, C, H, W), y (R,); the N images, or with
        fixed views the N*V views (image-major) and their labels."""
        if self.views is None:
            return self.x, self.y
        return self.views, self.y.repeat_interleave(self.num_views)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))
        self.aug_generator.manual_seed(int(seed) * 7919 + 104729 * (self.rank + 1))
        self.epoch, self.position, self._perm = 0, 0, None

    def next(self):
        """Return `(x (b, C, H, W), y (b,), idx (b,))`, b = batch_size / world_size; idx indexes
        `rows()`."""
        if self._perm is None or self.position + self.batch_size > len(self.x):
            if self._perm is not None:
                self.epoch += 1
            self._perm_cpu = torch.randperm(len(self.x), generator=self.generator)
            self._perm = to_device(self._perm_cpu, self.device)
            self.position = 0
        start = self.position + self.rank * self.local_batch
        idx = self._perm[start:start + self.local_batch]
        self.position += self.batch_size
        if self.views is not None:
            v = self.num_views
            pick = to_device(torch.randint(0, v, (len(idx),), generator=self.aug_generator), self.device)
            flat = idx * v + pick
            return self.views[flat], self.y[idx], flat
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
