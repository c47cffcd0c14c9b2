"""On-disk datasets: CIFAR-100 (in memory) and ImageFolder trees (streamed from disk).

Nothing is downloaded unless asked (`download: true` for cifar100); a missing dataset raises a
`DatasetNotFoundError` naming the expected layout.

- `cifar100`: torchvision's python-pickle layout under `data_dir`, normalised with the CIFAR-100
  mean/std, device-side augmentation = random crop 32 (pad 4, black fill) + horizontal flip.
- `imagefolder`: `data_dir/train/<class>/*.jpg` and `data_dir/val/<class>/*.jpg` (ImageNet layout;
  an optional `data_dir/test/` too), decoded by DataLoader workers. Training augmentation =
  RandomResizedCrop(image_size) + flip; evaluation = Resize(image_size / 0.875) + CenterCrop.

Both hold out `n_val` training samples (seeded by `data_seed`) as the env's validation split, which
drives rewards, probes and model selection, so that the reported test split is never used for
decisions; `n_val: 0` uses the test split for both, as the MTKD-RL code does.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..runtime.errors import ConfigError, UserError
from .tensor_data import DatasetSplits, check_batch_size, random_crop_flip

__all__ = ["DatasetNotFoundError", "cifar100", "imagefolder", "StreamingSplits", "StreamingLoader",
           "StreamEvalSet", "ImageSamples", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """An on-disk dataset is missing or not in the expected layout."""


# --- CIFAR-100 ------------------------------------------------------------------------------
_CIFAR_LAYOUT = "<data_dir>/cifar-100-python/{train,test,meta} (torchvision's layout of cifar-100-python.tar.gz)"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: the CIFAR batch files are pickles, and
    a user-supplied pickle must not be able to run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")


def _read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(x (N, 3, 32, 32) uint8, fine labels (N,) int64) from one CIFAR-100 pickle file."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError) as exc:
        raise DatasetNotFoundError(f"cifar100: {str(path)!r} is not a CIFAR-100 python batch file "
                                   f"({type(exc).__name__}: {exc}); expected {_CIFAR_LAYOUT}") from None
    if len(data) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() < 100):
        raise DatasetNotFoundError(f"cifar100: {str(path)!r} has {len(data)} images, {len(labels)} labels "
                                   f"(expected equal counts and fine labels in [0, 100))")
    return data, labels


def _cifar_root(data_dir: Optional[str], download: bool) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(f"cifar100: data_dir is not set; expected {_CIFAR_LAYOUT}")
    root = Path(data_dir).expanduser()
    for cand in (root / "cifar-100-python", root):
        if (cand / "train").is_file() and (cand / "test").is_file():
            return cand
    if download:
        from torchvision.datasets import CIFAR100

        try:
            for train in (True, False):
                CIFAR100(str(root), train=train, download=True)
        except Exception as exc:  # network or disk errors: one line, no traceback through urllib
            raise DatasetNotFoundError(f"cifar100: download to {str(root)!r} failed: "
                                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return root / "cifar-100-python"
    raise DatasetNotFoundError(f"cifar100: no CIFAR-100 under {str(root)!r}; expected {_CIFAR_LAYOUT}, or "
                               f"dataset_kwargs {{download: true}} to download it there")


def _holdout(n: int, n_val: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): a seeded random `n_val` of `range(n)` held out."""
    if not isinstance(n_val, int) or isinstance(n_val, bool) or not 0 <= n_val < n:
        raise ConfigError(f"n_val must be an integer in [0, {n}) (training samples held out for validation), "
                         f"got {n_val!r}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    t = torch.from_numpy(x).float().div_(255.0)
    return t.sub_(torch.tensor(mean)[:, None, None]).div_(torch.tensor(std)[:, None, None])


def cifar100(data_dir: Optional[str] = None, seed: int = 0, n_val: int = 5000,
             download: bool = False) -> DatasetSplits:
    """CIFAR-100 from `data_dir` (torchvision layout): 50k train / 10k test, 100 classes, 3x32x32.

    `n_val` training images (chosen by `seed`) form the validation split; `n_val: 0` trains on all
    50k and validates on the test set (the MTKD-RL protocol). `download: true` fetches the archive
    with torchvision when the files are missing.
    """
    root = _cifar_root(data_dir, download)
    x_train, y_train = _read_cifar_batch(root / "train")
    x_test, y_test = _read_cifar_batch(root / "test")
    tr, va = _holdout(len(x_train), n_val, seed)
    train_x = _normalise(x_train[tr], CIFAR100_MEAN, CIFAR100_STD)
    test_x = _normalise(x_test, CIFAR100_MEAN, CIFAR100_STD)
    train_y, test_y = torch.from_numpy(y_train[tr]), torch.from_numpy(y_test)
    if n_val > 0:
        val_x, val_y = _normalise(x_train[va], CIFAR100_MEAN, CIFAR100_STD), torch.from_numpy(y_train[va])
    else:
        val_x, val_y = test_x, test_y
    black = [-m / s for m, s in zip(CIFAR100_MEAN, CIFAR100_STD)]
    return DatasetSplits("cifar100", train_x, train_y, val_x, val_y, test_x, test_y, 100,
                         augment=random_crop_flip(padding=4, flip=True, fill=black))


# --- ImageFolder (streamed) -----------------------------------------------------------------
class ImageSamples(torch.utils.data.Dataset):
    """Image files with labels. `ds[i]` -> (x (3, S, S) float32, y, i) with the eval transform;
    `ds[(i, seed)]` -> the same with the train transform drawn from `seed` (reproducible anywhere,
    in any worker)."""

    def __init__(self, samples: List[Tuple[str, int]], train_transform, eval_transform) -> None:
        self.samples = samples
        self.train_transform, self.eval_transform = train_transform, eval_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        from PIL import Image

        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        with open(path, "rb") as fh:
            img = Image.open(fh).convert("RGB")
        if seed is None:
            x = self.eval_transform(img)
        else:
            # torchvision's random transforms draw from the global torch RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                x = self.train_transform(img)
        return x, label, index


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class StreamingLoader:
    """The `DeviceLoader` interface over images decoded from disk by DataLoader workers.

    The order of epoch e is a permutation drawn from (seed, e); each sample's augmentation is drawn
    from a per-position seed of the same generator. So the batches are a pure function of the seed
    (whatever `num_workers`), and `state_dict()` is just (seed, epoch, position). The last partial
    batch of each epoch is dropped. Under torch.distributed, as `DeviceLoader`: `batch_size` is the
    global batch and rank r of W gets rows [r*B/W, (r+1)*B/W) of each one.
    """

    def __init__(self, samples: ImageSamples, batch_size: int, device: torch.device, augment: bool,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1) -> None:
        check_batch_size(batch_size, len(samples), world_size)
        self.samples, self.batch_size, self.device = samples, batch_size, torch.device(device)
        self.rank, self.world_size, self.local_batch = rank, world_size, batch_size // world_size
        self.augment, self.num_workers = augment, num_workers
        self.batches_per_epoch = len(samples) // batch_size
        self.seed, self.epoch, self.position = 0, 0, 0
        self._started = False
        self._iter: Optional[Iterator] = None

    def __len__(self) -> int:
        return len(self.samples)

    def reset(self, seed: int) -> None:
        self.seed, self.epoch, self.position, self._started, self._iter = int(seed), 0, 0, False, None

    def _items(self) -> List:
        g = _epoch_generator(self.seed, self.epoch)
        perm = torch.randperm(len(self.samples), generator=g)
        seeds = torch.randint(0, 2 ** 62, (len(self.samples),), generator=g)
        end = self.batches_per_epoch * self.batch_size
        # This rank's rows of every remaining global batch.
        rows = torch.arange(self.position, end).view(-1, self.batch_size)
        rows = rows[:, self.rank * self.local_batch:(self.rank + 1) * self.local_batch].flatten()
        idx = perm[rows].tolist()
        if not self.augment:
            return idx
        return list(zip(idx, seeds[rows].tolist()))

    def next(self):
        """Return `(x (b, 3, S, S), y (b,), idx (b,))` on the device, b = batch_size / world_size."""
        if self._started and self.position + self.batch_size > self.batches_per_epoch * self.batch_size:
            self.epoch, self.position, self._iter = self.epoch + 1, 0, None
        self._started = True
        if self._iter is None:
            loader = torch.utils.data.DataLoader(self.samples, batch_size=self.local_batch, sampler=self._items(),
                                                 num_workers=self.num_workers,
                                                 pin_memory=self.device.type == "cuda")
            self._iter = iter(loader)
        x, y, idx = next(self._iter)
        self.position += self.batch_size
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb), idx.to(self.device)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "started": self._started}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._started, self._iter = bool(state["started"]), None


class StreamEvalSet:
    """An evaluation split read from disk in order, with the eval transform."""

    def __init__(self, samples: ImageSamples, device: torch.device, num_workers: int = 0) -> None:
        self.samples, self.device, self.num_workers = samples, torch.device(device), num_workers
        self.x = self.y = None  # not in memory: use batches()
        self._head: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def head(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first `n` samples as device tensors (cached: the probe batch is fixed)."""
        n = min(n, len(self.samples))
        if self._head is None or len(self._head[1]) < n:
            items = [self.samples[i] for i in range(n)]
            self._head = (torch.stack([it[0] for it in items]).to(self.device),
                          torch.tensor([it[1] for it in items], device=self.device))
        return self._head[0][:n], self._head[1][:n]

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(self.samples, batch_size=batch_size, shuffle=False,
                                             num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for x, y, _ in loader:
            yield x.to(self.device), y.to(self.device)


@dataclass
class StreamingSplits:
    """Train/val/test image lists decoded on the fly; same entry points as `DatasetSplits`."""

    name: str
    train: ImageSamples
    val: ImageSamples
    test: ImageSamples
    num_classes: int
    input_shape: tuple
    classes: List[str]
    num_workers: int = 0
    augment = None  # augmentation happens in the workers, not on the device

    def train_loader(self, batch_size: int, augment: bool, device: torch.device,
                     labels: Optional[torch.Tensor] = None, rank: int = 0, world_size: int = 1) -> StreamingLoader:
        if labels is not None:
            raise ConfigError(f"{self.name}: replacing training labels (noisy teachers) needs an in-memory dataset")
        return StreamingLoader(self.train, batch_size, device, augment, self.num_workers, rank, world_size)

    def eval_set(self, split: str, device: torch.device) -> StreamEvalSet:
        if split not in ("val", "test"):
            raise ValueError(f"split: expected 'val' or 'test', got {split!r}")
        return StreamEvalSet(getattr(self, split), device, self.num_workers)


_FOLDER_LAYOUT = "<data_dir>/train/<class>/<image> and <data_dir>/val/<class>/<image> (optionally <data_dir>/test/...)"


def _scan(folder: Path, classes: Optional[List[str]] = None) -> Tuple[List[str], List[Tuple[str, int]]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        found, _ = find_classes(str(folder))
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"imagefolder: {exc}; expected {_FOLDER_LAYOUT}") from None
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DatasetNotFoundError(f"imagefolder: the classes of {str(folder)!r} differ from train/: missing "
                                   f"{missing[:5]}, extra {extra[:5]} (expected the same class folders)")
    classes = found
    try:
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                               allow_empty=True)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"imagefolder: {exc}") from None
    if not samples:
        raise DatasetNotFoundError(f"imagefolder: no images under {str(folder)!r}; expected {_FOLDER_LAYOUT}")
    return classes, samples


def imagefolder(data_dir: Optional[str] = None, seed: int = 0, image_size: int = 224, n_val: Optional[int] = None,
                num_workers: Optional[int] = None, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> StreamingSplits:
    """Images in the ImageNet folder layout, streamed from disk at `image_size` x `image_size`.

    Splits: train = `train/` minus `n_val` held-out images (default min(10000, 10%), seeded by
    `seed`) that form the validation split; test = `test/` if present, else `val/` (where ImageNet
    results are reported). With a `test/` folder, or with `n_val: 0`, validation uses `val/`.
    `num_workers` decoding processes (default min(8, CPUs)).
    """
    from torchvision import transforms as T

    if data_dir is None:
        raise DatasetNotFoundError(f"imagefolder: data_dir is not set; expected {_FOLDER_LAYOUT}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"imagefolder: image_size must be an integer >= 8, got {image_size!r}")
    root = Path(data_dir).expanduser()
    classes, train_samples = _scan(root / "train")
    _, val_samples = _scan(root / "val", classes)
    test_dir = root / "test"
    norm = T.Normalize(list(mean), list(std))
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size), T.ToTensor(), norm])
    if test_dir.is_dir():
        if n_val:
            raise ConfigError("imagefolder: n_val must be 0 or unset when a test/ folder exists (val/ is then "
                             "the validation split)")
        _, test_samples = _scan(test_dir, classes)
        holdout = []
    else:
        test_samples = val_samples
        if n_val is None:
            n_val = min(10000, len(train_samples) // 10)
        tr, va = _holdout(len(train_samples), n_val, seed)
        holdout = [train_samples[i] for i in va]
        train_samples = [train_samples[i] for i in tr]
    val = holdout if holdout else val_samples
    workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
    make = lambda s: ImageSamples(s, train_tf, eval_tf)  # noqa: E731
    return StreamingSplits("imagefolder", make(train_samples), make(val), make(test_samples), len(classes),
                           (3, image_size, image_size), classes, workers)
