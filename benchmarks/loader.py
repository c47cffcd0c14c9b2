"""Images/s of the device-resident loader vs torchvision's DataLoader with the standard CIFAR recipe.

    python -m benchmarks.loader [--device auto] [--batch 128] [--batches 200] [--workers 4] [--json FILE]

Both produce augmented (random crop 32, padding 4, horizontal flip), normalised batches on the
target device from the same CIFAR-shaped uint8 images (50,000 generated 32x32x3 images: the
layout torchvision's CIFAR-100 holds in memory).
(a) `torch.utils.data.DataLoader` over a dataset doing what `torchvision.datasets.CIFAR100` does per
    item (PIL image, RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), `num_workers`
    worker processes, pinned memory, then `.to(device)`;
(b) `mtkd_env.data.DeviceLoader`: normalised images resident on the device, on-device shuffling and
    batched crop/flip.
"""

from __future__ import annotations

import sys
import time

from typing import Annotated, Optional

import numpy as np
import torch
from pydantic import Field

from mtkd_env.data import DeviceLoader, random_crop_flip
from mtkd_env.runtime.cli import run_cli
from mtkd_env.runtime.options import Cli, DeviceName, settings

from .cli import parse_flags, write_json

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


class CifarLikeDataset(torch.utils.data.Dataset):
    """uint8 HWC images with torchvision's per-item CIFAR transform pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_dataloader(images, labels, device, batch, batches, workers) -> float:
    loader = torch.utils.data.DataLoader(CifarLikeDataset(images, labels), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(5):  # warm-up: start workers
        next(it)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_device_loader(images, labels, device, batch, batches) -> float:
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    loader = DeviceLoader(x.to(device), torch.as_tensor(labels).to(device), batch, random_crop_flip(4, True))
    loader.reset(0)
    for _ in range(5):
        loader.next()
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        xb, _, _ = loader.next()
        n += len(xb)
    _sync(device)
    return n / (time.perf_counter() - t0)


@settings(label="flag")
class LoaderBenchmark:
    """The flags of `python -m benchmarks.loader`."""

    device: DeviceName = "auto"
    """Torch device: auto, cpu, cuda or cuda:N."""
    batch: Annotated[int, Field(ge=1)] = 128
    """Batch size."""
    batches: Annotated[int, Field(ge=1)] = 200
    """Batches to time."""
    workers: Annotated[int, Field(ge=0)] = 4
    """DataLoader worker processes."""
    images: Annotated[int, Field(ge=1)] = 50000
    """Random 32x32 images to load."""
    json: Annotated[Optional[str], Cli(metavar="FILE")] = None
    """Write the figures to this JSON file."""


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args, device = parse_flags(LoaderBenchmark, "python -m benchmarks.loader", __doc__, argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, args.images)
    dl = bench_dataloader(images, labels, device, args.batch, args.batches, args.workers)
    dev = bench_device_loader(images, labels, device, args.batch, args.batches)
    out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "batch": args.batch, "workers": args.workers, "dataloader_images_per_s": dl,
           "device_loader_images_per_s": dev, "speedup": dev / dl}
    print(f"device {out['device_name']}  batch {args.batch}")
    print(f"  DataLoader ({args.workers} workers): {dl:12.0f} images/s")
    print(f"  DeviceLoader:             {dev:12.0f} images/s")
    print(f"  speedup:                  {dev / dl:12.2f}x")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
