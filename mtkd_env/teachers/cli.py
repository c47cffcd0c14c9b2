"""`python -m mtkd_env.teachers train|list`: train teachers into the cache, list cached teachers.

    python -m mtkd_env.teachers train --dataset cifar100 --data-dir ~/data --arch resnet32x4
    python -m mtkd_env.teachers list

`train` defaults to the standard CIFAR teacher recipe of RepDistiller/MTKD-RL (`train_baseline.py`):
240 epochs, SGD lr 0.05 (momentum 0.9, no Nesterov), x0.1 at epochs 150/180/210, weight decay 5e-4,
batch 64, random crop + flip. It writes a resume file after every epoch (an interrupted run
continues from there when started again) and, at the end, a checkpoint with its metadata (arch,
dataset, classes, split, accuracies, recipe) at the path that the EnvConfig spec `"arch"` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import field
from pathlib import Path
from typing import Annotated, List, Optional, Sequence

from pydantic import Field

from ..runtime.cli import ArgumentParser, run_cli
from ..runtime.errors import CheckpointError, ConfigError, short_repr
from ..runtime.files import load_weights, torch_save_atomic
from ..runtime.options import Cli, DeviceName, add_options, options_from, settings

__all__ = ["TeacherTrainConfig", "TeacherListConfig", "train_teacher", "list_teachers", "main", "DEFAULT_MILESTONES"]

DEFAULT_MILESTONES = (150, 180, 210)
"""Learning-rate milestones of the reference 240-epoch teacher recipe."""


@settings
class TeacherTrainConfig:
    """One teacher training run; every field is the CLI flag of the same name (`_` -> `-`)."""

    dataset: str
    """Dataset name (cifar100, imagefolder, digits, synthetic)."""
    arch: str
    """Architecture name from `mtkd_env.models` (e.g. resnet32x4, wrn_28_4, RegNetY_400MF)."""
    data_dir: Optional[str] = None
    """Root folder of on-disk datasets."""
    dataset_kwargs: dict = field(default_factory=dict)
    """Dataset options as KEY=VALUE (e.g. n_val=0 to train on all 50k CIFAR-100 images)."""
    epochs: Annotated[int, Field(ge=1)] = 240
    """Training epochs."""
    lr: Annotated[float, Field(ge=0)] = 0.05
    """Initial learning rate (RepDistiller uses 0.01 for MobileNet/ShuffleNet teachers)."""
    milestones: Annotated[Optional[List[Annotated[int, Field(ge=1)]]], Cli(metavar='EPOCH', help_default=' '.join(map(str, DEFAULT_MILESTONES)))] = None
    """Epochs at which the learning rate is multiplied by `gamma` (none given: a constant learning rate)."""
    gamma: Annotated[float, Field(ge=0)] = 0.1
    """Learning-rate decay factor at each milestone."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0005
    """SGD weight decay."""
    momentum: Annotated[float, Field(ge=0)] = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum (off in the reference teacher recipe)."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Training batch size (the last partial batch of an epoch is dropped)."""
    augment: bool = True
    """The dataset's standard training augmentation."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of initialisation, data order and augmentation (EnvConfig.teacher_seed)."""
    data_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the train/val split (EnvConfig.data_seed)."""
    device: DeviceName = "auto"
    """"auto", "cpu", "cuda" or "cuda:N"."""
    cache_dir: Optional[str] = None
    """Teacher cache (EnvConfig.teacher_cache_dir); default `default_cache_dir()/teachers`."""
    out: Optional[str] = None
    """Write the checkpoint here instead of the cache (use it as "arch=/path" in EnvConfig)."""
    resume: bool = True
    """Continue from this run's resume file if one exists."""
    eval_every: Annotated[int, Field(ge=1)] = 1
    """Epochs between validation evaluations (the last epoch is always evaluated)."""
    eval_batch_size: Annotated[int, Field(ge=1)] = 512
    """Batch size of evaluation."""
    show_progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.milestones is None:
            if any(not 0 < m < self.epochs for m in DEFAULT_MILESTONES):
                raise ConfigError(f"milestones: the default {list(DEFAULT_MILESTONES)} (epochs of the 240-epoch "
                                  f"recipe) do not fit in --epochs {self.epochs}; give --milestones with epochs in "
                                  f"(0, {self.epochs}), or --milestones alone for a constant learning rate")
            self.milestones = list(DEFAULT_MILESTONES)
        if any(not 0 < m < self.epochs for m in self.milestones):
            raise ConfigError(f"milestones: expected epochs in (0, {self.epochs}), got {short_repr(self.milestones)}")

    def recipe(self) -> dict:
        return {"optimizer": "sgd", "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "epochs": self.epochs, "schedule": "multistep",
                "milestones": list(self.milestones), "gamma": self.gamma, "nesterov": self.nesterov,
                "augment": self.augment, "label_noise": 0.0}


@settings(label="flag")
class TeacherListConfig:
    """`list`: the cache to show."""

    cache_dir: Annotated[Optional[str], Cli(help_default="default_cache_dir()/teachers")] = None
    """Teacher cache (EnvConfig.teacher_cache_dir)."""


def _cache_dir(cache_dir: Optional[str]) -> Path:
    from ..config import default_cache_dir

    return Path(cache_dir or f"{default_cache_dir()}/teachers")


def _resume_path(out: Path) -> Path:
    return out.parent / (out.name + ".resume")


def train_teacher(cfg: TeacherTrainConfig, log=print) -> Path:
    """Train (or resume) one teacher as configured; returns the checkpoint path."""
    import torch
    from tqdm.auto import tqdm

    from .. import models
    from ..data import build_dataset
    from ..runtime.resources import resolve_device
    from . import TeacherTraining, evaluate_split, save_checkpoint, split_key, trained_path

    splits = build_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.dataset_kwargs)
    device = resolve_device(cfg.device)
    cache = _cache_dir(cfg.cache_dir)
    out = Path(cfg.out) if cfg.out else trained_path(str(cache), cfg.dataset, cfg.arch, cfg.seed, cfg.data_seed,
                                                     cfg.dataset_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = models.build(cfg.arch, num_classes=splits.num_classes, input_shape=splits.input_shape)
    rec = cfg.recipe()
    run_key = {"arch": cfg.arch, "seed": cfg.seed, "recipe": rec,
               "split": split_key(cfg.dataset, cfg.data_seed, cfg.dataset_kwargs)}
    from ..tasks import get_task

    task = get_task(getattr(splits, "task", "classification"))  # the dataset's targets fix the task
    run = TeacherTraining(model, splits, rec, cfg.seed, device, task)
    history: list = []
    resume_file = _resume_path(out)
    if cfg.resume and resume_file.is_file():
        try:
            saved = load_weights(resume_file, f"resume file {str(resume_file)!r}")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete it or pass --no-resume") from None
        if json.loads(saved["run_key"]) != json.loads(json.dumps(run_key, default=str)):
            raise CheckpointError(f"resume file {str(resume_file)!r} belongs to a different run "
                                  f"({saved['run_key']} vs {json.dumps(run_key, default=str)}); delete it or pass "
                                  f"--no-resume")
        run.load_state_dict(saved["training"])
        history = list(saved["history"])
        log(f"resuming {cfg.arch} on {cfg.dataset} from epoch {run.epoch}/{cfg.epochs}")
    val_set = splits.eval_set("val", device)
    steps = run.loader.batches_per_epoch
    start = time.time()
    with tqdm(total=cfg.epochs * steps, initial=run.epoch * steps, desc=f"teacher {cfg.arch}",
              disable=not cfg.show_progress, unit="it") as bar:
        while run.epoch < cfg.epochs:
            stats = run.run_epoch(on_batch=lambda _: bar.update(1))
            entry = {"epoch": run.epoch, "lr": run.lr, **stats}
            if run.epoch % cfg.eval_every == 0 or run.epoch == cfg.epochs:
                entry["val_acc"] = evaluate_split(model, val_set, cfg.eval_batch_size, task)
            history.append(entry)
            bar.set_postfix(epoch=run.epoch, loss=f"{stats['train_loss']:.3f}",
                            val=f"{entry['val_acc']:.4f}" if "val_acc" in entry else "-")
            if run.epoch < cfg.epochs:
                torch_save_atomic({"run_key": json.dumps(run_key, default=str), "training": run.state_dict(),
                                   "history": history}, resume_file)
    test_acc = evaluate_split(model, splits.eval_set("test", device), cfg.eval_batch_size, task)
    meta = {"arch": cfg.arch, "dataset": cfg.dataset, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "val_acc": history[-1]["val_acc"], "test_acc": test_acc,
            "recipe": rec, "seed": cfg.seed, "data_seed": cfg.data_seed,
            "dataset_kwargs": json.loads(json.dumps(cfg.dataset_kwargs, default=str)),
            "split": json.loads(json.dumps(run_key["split"], default=str)), "epochs_trained": run.epoch,
            "history": history, "source": "teachers train", "train_seconds_last_session": time.time() - start}
    save_checkpoint(out, model, meta)
    if resume_file.exists():
        resume_file.unlink()
    log(f"{cfg.arch} on {cfg.dataset}: val acc {meta['val_acc']:.4f}, test acc {test_acc:.4f} -> {out}")
    return out


def list_teachers(cache_dir: Optional[str] = None, log=print) -> List[dict]:
    """Print and return the cached teachers (and unfinished runs) of `cache_dir`."""
    from . import read_checkpoint_meta

    cache = _cache_dir(cache_dir)
    rows = []
    for path in sorted(cache.glob("*.pt")) if cache.is_dir() else []:
        try:
            meta = read_checkpoint_meta(path)
        except CheckpointError as exc:
            meta = {"error": str(exc)}
        rows.append({"file": path.name, **meta})
    partial = sorted(cache.glob("*.pt.resume")) if cache.is_dir() else []
    if not rows and not partial:
        log(f"no cached teachers in {str(cache)!r}")
        return rows
    log(f"teachers in {cache}:")
    log(f"{'dataset':<12} {'arch':<18} {'classes':>7} {'epochs':>6} {'val acc':>8} {'test acc':>8}  "
        f"{'source':<14} file")
    for r in rows:
        if "error" in r:
            continue
        recipe = r.get("recipe") or {}
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        log(f"{str(r.get('dataset', '?')):<12} {str(r.get('arch', '?')):<18} {str(r.get('num_classes', '?')):>7} "
            f"{str(r.get('epochs_trained', recipe.get('epochs', '?'))):>6} {fmt(r.get('val_acc')):>8} "
            f"{fmt(r.get('test_acc')):>8}  {str(r.get('source', '?'))[:14]:<14} {r['file']}")
    for r in rows:
        if "error" in r:
            log(f"unreadable file: {r['file']} ({r['error']})")
    for p in partial:
        try:
            saved = load_weights(p, f"resume file {p.name!r}")
            done, total = saved["training"]["epoch"], json.loads(saved["run_key"])["recipe"]["epochs"]
            log(f"unfinished run: {p.name} (epoch {done}/{total}; run the same train command to resume)")
        except (CheckpointError, KeyError, TypeError, ValueError):
            log(f"unfinished run: {p.name} (unreadable)")
    return rows


# --- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m mtkd_env.teachers", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one teacher into the cache (resumable)")
    add_options(train, TeacherTrainConfig)
    lister = sub.add_parser("list", help="show cached teachers with their accuracy")
    add_options(lister, TeacherListConfig)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["command"] == "list":
        list_teachers(options_from(TeacherListConfig, args).cache_dir)
        return 0
    from ..runtime.resources import resolve_device

    cfg = options_from(TeacherTrainConfig, args)
    resolve_device(cfg.device)  # CUDA asked for but absent: one line before any data is read
    train_teacher(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
