"""Teacher pool: parse specs, load checkpoints, train teachers (on first use or from the CLI).

A spec is one of

- `arch`: a cached checkpoint. Embedded datasets (digits, synthetic) train it on first use; any
  other dataset needs it trained beforehand with `python -m mtkd_env.teachers train` (a missing
  one is an error that prints that exact command; a multi-hour training never starts silently).
- `arch=noisy`: embedded datasets only: trained on systematically corrupted labels.
- `arch=group:G`: embedded datasets with class groups (glyphs) only: a specialist, trained on the
  training images of class group G alone, so it is expert on its group and confidently wrong
  (it predicts one of its own classes) everywhere else.
- `arch=seed:S`: embedded datasets only: the same recipe trained from seed `teacher_seed + S`
  (a near-copy of `arch` for S > 0).
- `arch=epoch:E`: embedded datasets only: the teacher's own training checkpoint after epoch E of
  the `teacher_epochs` run (E < teacher_epochs: an earlier, easier teacher, as RCO's route).
- `arch=random`: untrained, seeded weights (benchmarks and tests).
- `arch=pretrained` / `arch=pretrained:NAME`: torchvision ImageNet models only: torchvision's
  IMAGENET1K_V1 weights (the MTKD-RL ImageNet pool) or weights NAME, read from the torch hub cache.
- `arch=/path/to/checkpoint.pt`: this project's checkpoints, RepDistiller/mdistiller files
  (state dict under "model") or bare state dicts; always read with `weights_only=True`.

`python -m mtkd_env.teachers train|list` is the teacher CLI (`mtkd_env.teachers.cli`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from .. import models
from ..models.accuracy import correct_count, split_correct
from ..data import DATASETS, DatasetSplits
from ..protocols import EvalSet, Splits
from ..runtime.files import load_weights, torch_save_atomic
from ..runtime.errors import CheckpointError, did_you_mean
from ..tasks import Task, get_task

__all__ = ["TeacherSpec", "parse_spec", "Teacher", "load_pool", "train_model", "evaluate_accuracy",
           "evaluate_split", "EMBEDDED_DATASETS", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta",
           "CheckpointError", "TeacherTraining", "trained_path", "train_command", "split_key", "EMBEDDED_SOURCES",
           "embedded_recipe"]

EMBEDDED_DATASETS = ("digits", "synthetic", "glyphs", "scenes", "scene_boxes")
"""Datasets small enough that a missing teacher is trained on first use."""

_LOADING_ONLY_KWARGS = ("download", "num_workers")
"""Dataset options that change how data is read, not which samples form which split."""


@dataclass(frozen=True)
class TeacherSpec:
    arch: str
    source: str  # "cache" | "noisy" | "random" | "pretrained[:NAME]" | a file path

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
    """The on-first-use training recipe of embedded datasets; every entry is part of the cache key."""
    return {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
            "epochs": epochs, "schedule": "cosine", "label_noise": noisy_fraction, "noise_kind": "shift+1"}


EMBEDDED_SOURCES = ("cache", "noisy", "group", "seed", "epoch")
"""The on-first-use teacher kinds of embedded datasets (`arch=KIND[:N]`; "cache" is plain `arch`)."""


def embedded_recipe(spec: TeacherSpec, epochs: int, noisy_fraction: float, num_groups: int) -> Optional[dict]:
    """The training recipe of an embedded-dataset teacher spec (None: not an embedded kind). The
    kinds' extra keys (`group`, `seed_offset`, `stop_epoch`) are part of the recipe, so of the cache
    key; plain and noisy teachers keep their original keys."""
    kind, _, arg = spec.source.partition(":")
    if kind not in EMBEDDED_SOURCES or (kind in ("cache", "noisy")) != (arg == ""):
        return None
    rec = recipe(epochs, noisy_fraction if kind == "noisy" else 0.0)
    rec.update(models.teacher_recipe(spec.arch))  # the model's own overrides, part of the cache key
    if kind in ("cache", "noisy"):
        return rec
    if not arg.isdigit():
        raise CheckpointError(f"teacher {str(spec)!r}: expected '{spec.arch}={kind}:N' with a non-negative integer "
                              f"N, got {arg!r}")
    n = int(arg)
    if kind == "group":
        if not num_groups:
            raise CheckpointError(f"teacher {str(spec)!r}: group specialists need a dataset with class groups "
                                  f"(glyphs)")
        if n >= num_groups:
            raise CheckpointError(f"teacher {str(spec)!r}: group {n} does not exist; expected 0..{num_groups - 1}")
        rec["group"] = n
    elif kind == "seed":
        rec["seed_offset"] = n
    else:
        if not 1 <= n < epochs:
            raise CheckpointError(f"teacher {str(spec)!r}: epoch {n} is not a checkpoint of the {epochs}-epoch run; "
                                  f"expected 1..{epochs - 1}")
        rec["stop_epoch"] = n
    return rec


def cache_path(cache_dir: str, dataset: str, arch: str, seed: int, data_seed: int, rec: dict,
               dataset_kwargs: Optional[dict] = None) -> Path:
    """On-first-use cache file of an embedded-dataset teacher. Non-empty `dataset_kwargs` (e.g.
    synthetic shape/classes) are part of the key; empty ones keep the original key."""
    key = {"dataset": dataset, "arch": arch, "seed": seed, "data_seed": data_seed, "recipe": rec}
    if dataset_kwargs:
        key["dataset_kwargs"] = dataset_kwargs
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    tag = "noisy" if rec["label_noise"] > 0 else "clean"
    tag += "".join(f"-{k}{rec[k]}" for k in ("group", "seed_offset", "stop_epoch") if k in rec)
    return Path(cache_dir) / f"{dataset}__{arch}__{tag}__seed{seed}__{digest}.pt"


def split_key(dataset: str, data_seed: int, dataset_kwargs: Optional[dict]) -> dict:
    """What fixes the samples of each split: dataset, data_seed and its split options with their
    defaults filled in (so that `n_val: 5000` and the default are the same key)."""
    kwargs = dict(dataset_kwargs or {})
    if dataset in DATASETS:
        params = inspect.signature(DATASETS[dataset]).parameters
        defaults = {k: p.default for k, p in params.items()
                    if k not in ("data_dir", "seed") and p.default is not inspect.Parameter.empty}
        kwargs = {**defaults, **kwargs}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k not in _LOADING_ONLY_KWARGS}
    return {"dataset": dataset, "data_seed": data_seed, "dataset_kwargs": kwargs}


def trained_path(cache_dir: str, dataset: str, arch: str, seed: int, data_seed: int,
                 dataset_kwargs: Optional[dict] = None) -> Path:
    """Cache file of a teacher trained by `python -m mtkd_env.teachers train`: one per dataset split,
    arch and seed (training again with another recipe replaces it)."""
    key = json.dumps(split_key(dataset, data_seed, dataset_kwargs), sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{dataset}__{arch}__trained__seed{seed}__{digest}.pt"


def train_command(dataset: str, arch: str, seed: int, data_seed: int, dataset_kwargs: Optional[dict],
                  data_dir: Optional[str], cache_dir: Optional[str]) -> str:
    """The exact `teachers train` command that produces `trained_path(...)` for these settings."""
    import shlex

    parts = ["python -m mtkd_env.teachers train", f"--dataset {shlex.quote(dataset)}", f"--arch {shlex.quote(arch)}"]
    if data_dir:
        parts.append(f"--data-dir {shlex.quote(str(data_dir))}")
    if seed:
        parts.append(f"--seed {seed}")
    if data_seed:
        parts.append(f"--data-seed {data_seed}")
    if dataset_kwargs:
        pairs = [shlex.quote(f"{k}={json.dumps(v).replace(' ', '')}") for k, v in dataset_kwargs.items()]
        parts.append("--dataset-kwargs " + " ".join(pairs))
    if cache_dir:
        parts.append(f"--cache-dir {shlex.quote(str(cache_dir))}")
    return " ".join(parts)


# --- evaluation -----------------------------------------------------------------------------
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on (x, y) in eval mode; restores the previous mode."""
    return float(correct_count(model, x, y, batch_size)) / max(1, len(x))


def evaluate_split(model: nn.Module, eval_set: EvalSet, batch_size: int = 512, task: Optional[Task] = None) -> float:
    """The task's metric over an eval set (`TensorEvalSet` or a streamed one), in eval mode: top-1
    accuracy for classification (the default), mIoU for segmentation, COCO mAP for detection."""
    if task is None or task.name == "classification":
        return float(split_correct(model, eval_set, batch_size)) / max(1, len(eval_set))
    return float(task.evaluate(model, eval_set, batch_size)[0])


def corrupt_labels(y: torch.Tensor, num_classes: int, fraction: float, seed: int,
                   task: Optional[Task] = None) -> torch.Tensor:
    """Shift the labels of a seeded `fraction` of images to the next class: a systematic, confident
    error (dense targets: every labelled pixel or box of the image, `Task.shift_labels`)."""
    g = torch.Generator().manual_seed(seed + 7919)
    flip = torch.rand(len(y), generator=g) < fraction
    if task is not None and task.dense:
        return task.shift_labels(y, num_classes, flip)
    return torch.where(flip, (y + 1) % num_classes, y)


# --- training -------------------------------------------------------------------------------
class TeacherTraining:
    """Supervised SGD training of one model by recipe, one epoch per `run_epoch()`; resumable.

    Recipe keys: lr, momentum, weight_decay, batch_size, epochs, schedule ("cosine": per iteration
    over the run; "multistep": x`gamma` at the epochs in `milestones`), optional nesterov (default
    True), gamma, milestones, augment (default True), label_noise (embedded data only).
    Data order and augmentation come from the loader seeded with `seed`.
    """

    def __init__(self, model: nn.Module, splits: Splits, rec: dict, seed: int, device: torch.device,
                 task: Optional[Task] = None) -> None:
        self.model, self.rec, self.device = model.to(device).train(), rec, device
        self.task = task or get_task("classification")
        labels = None
        if rec.get("label_noise", 0) > 0:
            labels = corrupt_labels(splits.train_y, splits.num_classes, rec["label_noise"], seed, self.task)
        self.loader = splits.train_loader(rec["batch_size"], rec.get("augment", True), device, labels=labels)
        self.loader.reset(seed)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=rec["lr"], momentum=rec["momentum"],
                                         weight_decay=rec["weight_decay"], nesterov=rec.get("nesterov", True))
        steps = self.loader.batches_per_epoch
        if rec["schedule"] == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, rec["epochs"] * steps)
        elif rec["schedule"] == "multistep":
            milestones, gamma = list(rec["milestones"]), rec["gamma"]
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda it: gamma ** sum(it // steps >= m for m in milestones))
        else:
            raise ValueError(f"recipe schedule: expected 'cosine' or 'multistep', got {rec['schedule']!r}")
        self.epoch = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run_epoch(self, on_batch: Optional[Callable[[float], None]] = None) -> dict:
        """One pass over the training split; returns the mean loss and training accuracy."""
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        for _ in range(self.loader.batches_per_epoch):
            x, y, _ = self.loader.next()
            out = self.model(x)
            loss = self.task.supervised_loss(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += self.task.correct(out, y)
            seen += len(y)
            if on_batch is not None:
                on_batch(len(y))
        self.epoch += 1
        return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(),
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])  # a LambdaLR keeps its own lambda
        self.loader.load_state_dict(state["loader"])
        self.epoch = int(state["epoch"])


def train_model(model: nn.Module, splits: DatasetSplits, rec: dict, seed: int, device: torch.device,
                show_progress: bool = True, desc: str = "teacher", task: Optional[Task] = None) -> nn.Module:
    """Train `model` by `rec` (the on-first-use path of embedded datasets): `rec["epochs"]` epochs,
    or the first `rec["stop_epoch"]` of them (a checkpoint of that run); with `rec["group"]` on the
    training images of that class group only; from seed `seed + rec.get("seed_offset", 0)`."""
    from tqdm.auto import tqdm

    if "group" in rec:
        keep = torch.isin(splits.train_y, torch.as_tensor(splits.class_groups[rec["group"]]))
        splits = dataclasses.replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep])
    run = TeacherTraining(model, splits, rec, seed + rec.get("seed_offset", 0), device, task)
    epochs = rec.get("stop_epoch", rec["epochs"])
    for _ in tqdm(range(epochs), desc=f"training {desc}", disable=not show_progress, leave=False):
        run.run_epoch()
    model.zero_grad(set_to_none=True)  # a frozen teacher keeps no gradients of its training (nor their memory)
    return model.eval()


# --- checkpoints ----------------------------------------------------------------------------
def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """`{"state_dict", "meta"}`, written atomically."""
    torch_save_atomic({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "meta": meta}, path)


def _read(path: Path):
    return load_weights(path, f"teacher checkpoint {str(path)!r}")


def _unpack(path: Path, blob) -> tuple:
    """(state dict, meta) of this project's, RepDistiller/mdistiller's or bare-state-dict files."""
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob["state_dict"], dict):
        return blob["state_dict"], dict(blob.get("meta") or {})
    if isinstance(blob, dict) and "model" in blob and isinstance(blob["model"], dict):
        meta = {k: blob[k] for k in ("epoch", "best_acc", "accuracy") if k in blob}
        return blob["model"], meta
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob, {}
    raise CheckpointError(f"teacher checkpoint {str(path)!r}: expected a state dict (bare, under 'state_dict' "
                          f"or under 'model'), got {type(blob).__name__}"
                          + (f" with keys {sorted(blob)[:6]}" if isinstance(blob, dict) else ""))


def read_checkpoint_meta(path: Path) -> dict:
    """The metadata of a checkpoint (empty for foreign formats)."""
    return _unpack(Path(path), _read(path))[1]


def load_checkpoint(path: Path, model: nn.Module, expect: dict) -> dict:
    """Load `path` into `model` (weights_only). `expect` holds arch/dataset/num_classes to match;
    a mismatch raises `CheckpointError` naming both sides."""
    path = Path(path)
    state, meta = _unpack(path, _read(path))
    for key in ("arch", "dataset", "num_classes"):
        if key in meta and key in expect and meta[key] != expect[key]:
            raise CheckpointError(f"teacher checkpoint {str(path)!r} was saved for {key}={meta[key]!r} "
                                  f"but the pool needs {key}={expect[key]!r}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not fit arch {expect.get('arch')!r} with "
                              f"{expect.get('num_classes')} classes: {detail[:300]}") from None
    return meta


# --- the pool -------------------------------------------------------------------------------
def _seeded_build(arch: str, splits: Splits, seed: int, **kw) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(arch, num_classes=splits.num_classes, input_shape=splits.input_shape, **kw)


def load_pool(specs: List[str], splits: Splits, device: torch.device, cache_dir: str, seed: int,
              data_seed: int, epochs: int, noisy_fraction: float, show_progress: bool = True,
              dataset_name: Optional[str] = None, dataset_kwargs: Optional[dict] = None,
              data_dir: Optional[str] = None, task: Optional[Task] = None) -> List[Teacher]:
    """Build every teacher of `specs`: frozen, eval mode, on `device`, with its val accuracy.

    `splits` is a `DatasetSplits` or a `StreamingSplits`; `dataset_kwargs`/`data_dir` are the
    dataset's options (part of the cache key, and of the `teachers train` command printed when a
    checkpoint is missing).
    """
    dataset = dataset_name or splits.name
    embedded = dataset in EMBEDDED_DATASETS
    val_set = splits.eval_set("val", device)
    pool = []
    for i, raw in enumerate(specs):
        spec = parse_spec(raw)
        if spec.arch not in models.available():
            raise CheckpointError(f"teacher {raw!r}: unknown architecture {spec.arch!r}"
                                  f"{did_you_mean([spec.arch], models.available())}; known: {models.available()}")
        expect = {"arch": spec.arch, "dataset": dataset, "num_classes": splits.num_classes}
        meta: dict = dict(expect)
        if spec.source == "random":
            model = _seeded_build(spec.arch, splits, seed * 1000 + i)
            meta["source"] = "random"
        elif spec.source == "pretrained" or spec.source.startswith("pretrained:"):
            from ..models.imagenet import TORCHVISION_MODELS, WeightsNotFoundError

            if spec.arch not in TORCHVISION_MODELS:
                raise CheckpointError(f"teacher {raw!r}: '=pretrained' needs a torchvision model "
                                      f"({sorted(TORCHVISION_MODELS)}), got {spec.arch!r}")
            weights = spec.source.partition(":")[2] or "IMAGENET1K_V1"
            try:
                model = _seeded_build(spec.arch, splits, seed, weights=weights)
            except (WeightsNotFoundError, ValueError) as exc:
                raise CheckpointError(f"teacher {raw!r}: {exc}") from None
            meta.update(source=spec.source, weights=weights)
        elif embedded and (rec := embedded_recipe(spec, epochs, noisy_fraction,
                                                  len(getattr(splits, "class_groups", None) or ()))) is not None:
            path = cache_path(cache_dir, dataset, spec.arch, seed, data_seed, rec, dataset_kwargs)
            model = _seeded_build(spec.arch, splits, seed + rec.get("seed_offset", 0))
            if path.is_file():
                meta = load_checkpoint(path, model, expect)
            else:
                train_model(model, splits, rec, seed, device, show_progress, desc=str(spec), task=task)
                meta.update(recipe=rec, seed=seed, data_seed=data_seed, source=spec.source,
                            val_acc=evaluate_split(model, val_set, task=task))
                save_checkpoint(path, model, meta)
        elif spec.source.partition(":")[0] in EMBEDDED_SOURCES[1:]:
            raise CheckpointError(f"teacher {raw!r}: '={spec.source.partition(':')[0]}' teachers exist only for the "
                                  f"embedded datasets {list(EMBEDDED_DATASETS)}, not {dataset!r}")
        elif spec.source == "cache":
            path = trained_path(cache_dir, dataset, spec.arch, seed, data_seed, dataset_kwargs)
            if not path.is_file():
                cmd = train_command(dataset, spec.arch, seed, data_seed, dataset_kwargs, data_dir, cache_dir)
                raise CheckpointError(f"no trained teacher {spec.arch!r} for dataset {dataset!r} in {cache_dir!r} "
                                      f"(expected {path.name}); train it with: {cmd}")
            model = _seeded_build(spec.arch, splits, seed)
            meta = load_checkpoint(path, model, expect)
        else:
            model = _seeded_build(spec.arch, splits, seed)
            meta = {**expect, **load_checkpoint(Path(spec.source), model, expect), "source": spec.source}
        for p in model.parameters():
            p.requires_grad_(False)
        model = model.to(device).eval()
        val_acc = evaluate_split(model, val_set, task=task)
        pool.append(Teacher(str(spec), model, val_acc, meta))
    return pool

