"""Teacher specs, checkpoint formats and errors, and the `python -m mtkd_env.teachers` CLI."""

from __future__ import annotations

import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtkd_env import EnvConfig, MultiTeacherKDEnv, models
from mtkd_env.teachers import cli as teacher_cli
from mtkd_env.data import build_dataset
from mtkd_env.teachers.cli import TeacherTrainConfig, train_teacher
from mtkd_env.teachers import CheckpointError, load_checkpoint, load_pool, save_checkpoint

SYNTH = {"shape": [3, 8, 8], "num_classes": 4, "n_train": 64, "n_val": 16, "n_test": 16}


def _fake_cifar100(root: Path, n_train: int = 120, n_test: int = 40) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, n).tolist()}, fh, protocol=2)
    return root


# --- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_mismatch_errors_name_both_sides(tmp_path):
    model = models.build("resnet8", 10)
    path = tmp_path / "t.pt"
    save_checkpoint(path, model, {"arch": "resnet8", "dataset": "cifar10", "num_classes": 10})
    expect = {"arch": "resnet8", "dataset": "cifar10", "num_classes": 10}
    assert load_checkpoint(path, models.build("resnet8", 10), expect)["arch"] == "resnet8"
    with pytest.raises(CheckpointError, match="saved for arch='resnet8' but the pool needs arch='resnet14'"):
        load_checkpoint(path, models.build("resnet14", 10), {**expect, "arch": "resnet14"})
    with pytest.raises(CheckpointError, match="saved for dataset='cifar10' but the pool needs dataset='cifar100'"):
        load_checkpoint(path, models.build("resnet8", 10), {**expect, "dataset": "cifar100"})
    with pytest.raises(CheckpointError, match="saved for num_classes=10 but the pool needs num_classes=100"):
        load_checkpoint(path, models.build("resnet8", 100), {**expect, "num_classes": 100})


def test_foreign_checkpoint_formats(tmp_path):
    torch.manual_seed(0)
    src = models.build("wrn_16_2", 100)
    state = src.state_dict()
    # RepDistiller/mdistiller: {"epoch", "model", "best_acc", "optimizer"}; DataParallel "module." keys.
    repd = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": {f"module.{k}": v for k, v in state.items()}, "best_acc": torch.tensor(75.6),
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "momentum": 0.9}]}}, repd)
    dst = models.build("wrn_16_2", 100)
    meta = load_checkpoint(repd, dst, {"arch": "wrn_16_2", "num_classes": 100})
    assert meta["epoch"] == 240
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), state.values()))
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    load_checkpoint(bare, models.build("wrn_16_2", 100), {})
    # No metadata: a class-count or architecture mismatch is caught by the weights' shapes.
    with pytest.raises(CheckpointError, match=r"does not fit arch 'wrn_16_2' with 10 classes: .*fc\.weight"):
        load_checkpoint(repd, models.build("wrn_16_2", 10), {"arch": "wrn_16_2", "num_classes": 10})
    with pytest.raises(CheckpointError, match="does not fit arch 'resnet8x4'"):
        load_checkpoint(repd, models.build("resnet8x4", 100), {"arch": "resnet8x4", "num_classes": 100})


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", models.build("mlp", 4, (1, 8, 8)), {})
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read as a weights-only torch file"):
        load_checkpoint(tmp_path / "junk.pt", models.build("mlp", 4, (1, 8, 8)), {})
    torch.save({"model": models.build("mlp", 4, (1, 8, 8))}, tmp_path / "pickled_module.pt")  # not weights-only
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "pickled_module.pt", models.build("mlp", 4, (1, 8, 8)), {})
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(tmp_path / "list.pt", models.build("mlp", 4, (1, 8, 8)), {})


# --- specs -----------------------------------------------------------------------------------
def test_bad_specs_on_disk_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _fake_cifar100(tmp_path)
    splits = build_dataset("cifar100", data_dir=str(tmp_path), n_val=20)
    kw = dict(device=torch.device("cpu"), cache_dir=str(tmp_path / "cache"), seed=0, data_seed=0, epochs=1,
              noisy_fraction=0.5, show_progress=False, dataset_kwargs={"n_val": 20}, data_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="'=noisy' teachers exist only for the embedded datasets"):
        load_pool(["resnet8=noisy"], splits, **kw)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9'"):
        load_pool(["resnet9=random"], splits, **kw)
    with pytest.raises(CheckpointError, match="'=pretrained' needs a torchvision model"):
        load_pool(["resnet8=pretrained"], splits, **kw)
    with pytest.raises(CheckpointError, match="resnet18-f37072fd.pth"):
        load_pool(["resnet18=pretrained"], splits, **kw)


def test_missing_teacher_prints_the_exact_train_command_which_then_works(tmp_path, capsys):
    _fake_cifar100(tmp_path)
    cache = tmp_path / "cache"
    cfg = EnvConfig(dataset="cifar100", data_dir=str(tmp_path), dataset_kwargs={"n_val": 20, "download": False},
                    teacher_seed=1,
                    teachers=["tiny_cnn", "resnet8=random"], student="tiny_cnn", teacher_cache_dir=str(cache),
                    batch_size=8, max_steps=2, probe_size=8, device="cpu", show_progress=False)
    with pytest.raises(CheckpointError, match="no trained teacher 'tiny_cnn'") as err:
        MultiTeacherKDEnv(cfg)
    cmd = re.search(r"train it with: (python -m mtkd_env\.teachers train .*)$", str(err.value)).group(1)
    assert "--dataset cifar100 --arch tiny_cnn" in cmd and "--seed 1" in cmd
    assert "--dataset-kwargs n_val=20 download=false" in cmd
    argv = shlex.split(cmd)[3:] + ["--epochs", "1", "--milestones", "--batch-size", "16", "--device", "cpu",
                              "--no-show-progress"]
    assert teacher_cli.main(argv) == 0
    env = MultiTeacherKDEnv(cfg)
    assert env.engine.teachers[0].meta["source"] == "teachers train"
    assert env.engine.teachers[0].meta["recipe"]["epochs"] == 1
    # A different split (n_val) is a different teacher: not silently reused.
    with pytest.raises(CheckpointError, match="--dataset-kwargs n_val=30"):
        MultiTeacherKDEnv(cfg.replace(dataset_kwargs={"n_val": 30}))
    # Options that only change how data is read (download) do not change the teacher.
    assert MultiTeacherKDEnv(cfg.replace(dataset_kwargs={"n_val": 20})).engine.teachers[0].meta["epochs_trained"] == 1


# --- CLI -------------------------------------------------------------------------------------
def test_cli_trains_one_epoch_and_lists_it(tmp_path):
    cache = tmp_path / "cache"
    kwargs = ["shape=[3,8,8]", "num_classes=4", "n_train=64", "n_val=16", "n_test=16"]
    assert teacher_cli.main(["train", "--dataset", "synthetic", "--dataset-kwargs", *kwargs, "--arch", "tiny_cnn",
                             "--epochs", "1", "--milestones", "--batch-size", "16", "--device", "cpu",
                             "--cache-dir", str(cache), "--no-show-progress"]) == 0
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.resume"))
    meta = torch.load(files[0], weights_only=True)["meta"]
    assert meta["arch"] == "tiny_cnn" and meta["num_classes"] == 4 and meta["epochs_trained"] == 1
    assert meta["recipe"]["lr"] == 0.05 and meta["recipe"]["weight_decay"] == 5e-4
    # The `python -m mtkd_env.teachers` entry point itself.
    listing = subprocess.run([sys.executable, "-m", "mtkd_env.teachers", "list", "--cache-dir", str(cache)],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "tiny_cnn" in line)
    assert "synthetic" in row and f"{meta['val_acc']:.4f}" in row and f"{meta['test_acc']:.4f}" in row


def test_cli_bad_input_is_one_line(capsys):
    assert teacher_cli.main(["train", "--dataset", "synthetic", "--arch", "tiny_cnn", "--epochs", "2",
                             "--milestones", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "milestones: expected epochs in (0, 2), got [5]" in err
    assert teacher_cli.main(["train", "--dataset", "cifar100", "--data-dir", "/nonexistent", "--arch", "resnet8"]) == 2
    assert "expected <data_dir>/cifar-100-python" in capsys.readouterr().err


def test_cli_default_recipe_is_the_standard_cifar_recipe():
    rec = TeacherTrainConfig(dataset="cifar100", arch="resnet32x4").recipe()
    assert (rec["epochs"], rec["lr"], rec["milestones"], rec["gamma"], rec["weight_decay"], rec["batch_size"],
            rec["momentum"], rec["nesterov"]) == (240, 0.05, [150, 180, 210], 0.1, 5e-4, 64, 0.9, False)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    base = dict(dataset="synthetic", dataset_kwargs=SYNTH, arch="tiny_resnet", epochs=3, milestones=[2],
                batch_size=16, device="cpu", show_progress=False)
    full = train_teacher(TeacherTrainConfig(**base, out=str(tmp_path / "full.pt")), log=lambda *_: None)

    from mtkd_env.teachers import TeacherTraining

    original = TeacherTraining.run_epoch

    def crash_in_epoch_two(self, *a, **k):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(TeacherTraining, "run_epoch", crash_in_epoch_two)
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        train_teacher(TeacherTrainConfig(**base, out=str(out)), log=lambda *_: None)
    assert not out.exists() and (tmp_path / "resumed.pt.resume").is_file()
    monkeypatch.setattr(TeacherTraining, "run_epoch", original)
    with pytest.raises(CheckpointError, match="belongs to a different run"):
        train_teacher(TeacherTrainConfig(**{**base, "lr": 0.1}, out=str(out)), log=lambda *_: None)
    logs = []
    train_teacher(TeacherTrainConfig(**base, out=str(out)), log=logs.append)
    assert any("from epoch 1/3" in line for line in logs)
    a, b = torch.load(full, weights_only=True), torch.load(out, weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [h["val_acc"] for h in a["meta"]["history"]] == [h["val_acc"] for h in b["meta"]["history"]]
