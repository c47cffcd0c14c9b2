"""Teacher pool: parse specs, load checkpoints, and train-and-cache teachers of embedded datasets.

A spec is `arch` (cached checkpoint; trained on first use for embedded datasets), `arch=noisy`
(embedded datasets: trained on systematically corrupted labels, a deliberately unreliable
teacher), `arch=random` (untrained weights) or `arch=/path/to/checkpoint.pt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn
import torch.nn.functional as F

from . import models
from .data import DatasetSplits

__all__ = ["TeacherSpec", "parse_spec", "Teacher", "load_pool", "train_model", "evaluate_accuracy",
           "EMBEDDED_DATASETS", "save_checkpoint", "load_checkpoint", "CheckpointError"]

EMBEDDED_DATASETS = ("digits", "synthetic")
"""Datasets small enough that a missing teacher is trained on first use."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or belongs to another model/dataset."""


@dataclass(frozen=True)
class TeacherSpec:
    arch: str
    source: str  # "cache" | "noisy" | "random" | a file path

    def __str__(self) -> str:
        return self.arch if self.source == "cache" else f"{self.arch}={self.source}"


def parse_spec(spec: str) -> TeacherSpec:
    arch, _, source = spec.partition("=")
    return TeacherSpec(arch.strip(), source.strip() or "cache")


@dataclass
class Teacher:
    name: str
    model: nn.Module
    val_acc: float
    meta: dict


def recipe(epochs: int, noisy_fraction: float) -> dict:
    """The on-first-use training recipe; every entry is part of the cache key."""
    return {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
            "epochs": epochs, "schedule": "cosine", "label_noise": noisy_fraction, "noise_kind": "shift+1"}


def cache_path(cache_dir: str, dataset: str, arch: str, seed: int, data_seed: int, rec: dict) -> Path:
    key = json.dumps({"dataset": dataset, "arch": arch, "seed": seed, "data_seed": data_seed,
                      "recipe": rec}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    tag = "noisy" if rec["label_noise"] > 0 else "clean"
    return Path(cache_dir) / f"{dataset}__{arch}__{tag}__seed{seed}__{digest}.pt"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on (x, y) in eval mode; restores the previous mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).logits.argmax(1) == y[i:i + batch_size]).sum()
    model.train(was_training)
    return float(correct) / max(1, len(x))


def corrupt_labels(y: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """Shift a seeded `fraction` of labels to the next class: a systematic, confident error."""
    g = torch.Generator().manual_seed(seed + 7919)
    flip = torch.rand(len(y), generator=g) < fraction
    return torch.where(flip, (y + 1) % num_classes, y)


def train_model(model: nn.Module, splits: DatasetSplits, rec: dict, seed: int, device: torch.device,
                show_progress: bool = True, desc: str = "teacher") -> nn.Module:
    """Train `model` on the training split with recipe `rec` (SGD, cosine LR, seeded order)."""
    from tqdm.auto import tqdm

    x, y = splits.train_x.to(device), splits.train_y.to(device)
    if rec["label_noise"] > 0:
        y = corrupt_labels(splits.train_y, splits.num_classes, rec["label_noise"], seed).to(device)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=rec["lr"], momentum=rec["momentum"],
                          weight_decay=rec["weight_decay"], nesterov=True)
    steps_per_epoch = max(1, len(x) // rec["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, rec["epochs"] * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(rec["epochs"]), desc=f"training {desc}", disable=not show_progress, leave=False):
        perm = torch.randperm(len(x), generator=g).to(device)
        for b in range(steps_per_epoch):
            idx = perm[b * rec["batch_size"]:(b + 1) * rec["batch_size"]]
            xb = x[idx] if splits.augment is None else splits.augment(x[idx], g)
            loss = F.cross_entropy(model(xb).logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Write atomically: a crash never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, model: nn.Module, expect: dict) -> dict:
    """Load `path` into `model` (weights_only). `expect` holds arch/dataset/num_classes to match.

    Accepts this project's format (`{"state_dict", "meta"}`) and RepDistiller/mdistiller files
    (state dict under `"model"`, or a bare state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"teacher checkpoint {str(path)!r} could not be read as a weights-only "
                              f"torch file: {str(exc).splitlines()[0]}") from None
    meta = {}
    if isinstance(blob, dict) and "state_dict" in blob:
        state, meta = blob["state_dict"], dict(blob.get("meta") or {})
    elif isinstance(blob, dict) and "model" in blob and isinstance(blob["model"], dict):
        state = blob["model"]
    elif isinstance(blob, dict):
        state = blob
    else:
        raise CheckpointError(f"teacher checkpoint {str(path)!r}: expected a state dict, got "
                              f"{type(blob).__name__}")
    for key in ("arch", "dataset", "num_classes"):
        if key in meta and key in expect and meta[key] != expect[key]:
            raise CheckpointError(f"teacher checkpoint {str(path)!r} was saved for {key}={meta[key]!r} "
                                  f"but the pool needs {key}={expect[key]!r}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not fit arch "
                              f"{expect.get('arch')!r} with {expect.get('num_classes')} classes: "
                              f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}"
                              ) from None
    return meta


def load_pool(specs: List[str], splits: DatasetSplits, device: torch.device, cache_dir: str, seed: int,
              data_seed: int, epochs: int, noisy_fraction: float, show_progress: bool = True,
              dataset_name: Optional[str] = None) -> List[Teacher]:
    """Build every teacher of `specs`: frozen, eval mode, on `device`, with its val accuracy."""
    dataset = dataset_name or splits.name
    pool = []
    for i, raw in enumerate(specs):
        spec = parse_spec(raw)
        model = models.build(spec.arch, num_classes=splits.num_classes, input_shape=splits.input_shape)
        expect = {"arch": spec.arch, "dataset": dataset, "num_classes": splits.num_classes}
        meta: dict = dict(expect)
        if spec.source == "random":
            g_state = torch.random.get_rng_state()
            torch.manual_seed(seed * 1000 + i)  # seeded init, then restore global RNG
            model = models.build(spec.arch, num_classes=splits.num_classes, input_shape=splits.input_shape)
            torch.random.set_rng_state(g_state)
            meta["source"] = "random"
        elif spec.source in ("cache", "noisy"):
            rec = recipe(epochs, noisy_fraction if spec.source == "noisy" else 0.0)
            path = cache_path(cache_dir, dataset, spec.arch, seed, data_seed, rec)
            if path.is_file():
                meta = load_checkpoint(path, model, expect)
            elif dataset in EMBEDDED_DATASETS:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = models.build(spec.arch, num_classes=splits.num_classes,
                                         input_shape=splits.input_shape)
                    train_model(model, splits, rec, seed, device, show_progress, desc=str(spec))
                meta.update(recipe=rec, seed=seed, data_seed=data_seed, source=spec.source,
                            val_acc=evaluate_accuracy(model, splits.val_x.to(device), splits.val_y.to(device)))
                save_checkpoint(path, model, meta)
            else:
                raise CheckpointError(
                    f"no cached teacher {spec.arch!r} for dataset {dataset!r} in {cache_dir!r}; train it "
                    f"with: python -m mtkd_env.teachers train --dataset {dataset} --arch {spec.arch}")
        else:
            meta = {**expect, **load_checkpoint(Path(spec.source), model, expect), "source": spec.source}
        for p in model.parameters():
            p.requires_grad_(False)
        model = model.to(device).eval()
        val_acc = evaluate_accuracy(model, splits.val_x.to(device), splits.val_y.to(device))
        pool.append(Teacher(str(spec), model, val_acc, meta))
    return pool
