"""cifar100 (fake files in torchvision's pickle layout), imagefolder (tiny PNG trees), synthetic."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mtkd_env import ConfigError, EnvConfig, MultiTeacherKDEnv
from mtkd_env.data import DatasetSplits, build_dataset
from mtkd_env.data.disk_data import CIFAR100_MEAN, CIFAR100_STD, DatasetNotFoundError, StreamingLoader


def make_fake_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> dict:
    """Random uint8 images in the layout of cifar-100-python.tar.gz (pickled dicts, protocol 2)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 100, n)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                         "filenames": [f"{i}.png" for i in range(n)]}, fh, protocol=2)
        arrays[name] = (x.reshape(-1, 3, 32, 32), y)
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    return arrays


def make_image_folder(root: Path, counts: dict, classes=("ant", "bee", "cat"), size=(20, 26)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in counts.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


# --- cifar100 ---------------------------------------------------------------------------------
def test_cifar100_reads_torchvision_layout_with_holdout(tmp_path):
    arrays = make_fake_cifar100(tmp_path)
    s = build_dataset("cifar100", data_dir=str(tmp_path), seed=3, n_val=50)
    assert isinstance(s, DatasetSplits) and s.num_classes == 100 and s.input_shape == (3, 32, 32)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (250, 50, 100)
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    x_test, y_test = arrays["test"]
    torch.testing.assert_close(s.test_x[7], (torch.from_numpy(x_test[7]).float() / 255 - mean) / std)
    assert torch.equal(s.test_y, torch.from_numpy(y_test))
    # Train and held-out val partition the 300 training images (matched by content).
    x_train = (torch.from_numpy(arrays["train"][0]).float() / 255 - mean) / std
    keys = {tuple(v.flatten()[:8].tolist()) for v in x_train}
    seen = [tuple(v.flatten()[:8].tolist()) for v in torch.cat([s.train_x, s.val_x])]
    assert len(set(seen)) == 300 and set(seen) == keys
    again = build_dataset("cifar100", data_dir=str(tmp_path / "cifar-100-python"), seed=3, n_val=50)
    assert torch.equal(again.val_x, s.val_x)  # same seed -> same split; data_dir may be the inner folder
    other = build_dataset("cifar100", data_dir=str(tmp_path), seed=4, n_val=50)
    assert not torch.equal(other.val_x, s.val_x)


def test_cifar100_paper_protocol_and_augmentation(tmp_path):
    make_fake_cifar100(tmp_path)
    s = build_dataset("cifar100", data_dir=str(tmp_path), n_val=0)
    assert len(s.train_y) == 300 and s.val_x is s.test_x
    # Padding is black (as torchvision pads before normalising): a black image stays black.
    black = torch.tensor([-m / sd for m, sd in zip(CIFAR100_MEAN, CIFAR100_STD)])[:, None, None]
    x = black.expand(16, 3, 32, 32).contiguous()
    out = s.augment(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)
    # ... while real content moves (crop offsets and flips differ per sample).
    moved = s.augment(s.train_x[:16], torch.Generator().manual_seed(0))
    assert moved.shape == (16, 3, 32, 32) and not torch.equal(moved, s.train_x[:16])


def test_cifar100_missing_or_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python/\{train,test,meta\}.*download: true"):
        build_dataset("cifar100", data_dir=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="data_dir is not set"):
        build_dataset("cifar100")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    (folder / "test").write_bytes(pickle.dumps({"data": 1}, protocol=2))
    with pytest.raises(DatasetNotFoundError, match="unexpected object .*system"):
        build_dataset("cifar100", data_dir=str(tmp_path))
    assert not marker.exists()


def test_unknown_dataset_options_are_named():
    with pytest.raises(ValueError, match=r"dataset 'synthetic': unknown option\(s\) \['shapes'\]"):
        build_dataset("synthetic", shapes=[3, 8, 8])
    with pytest.raises(ValueError, match="shape must be a list of positive integers"):
        build_dataset("synthetic", shape=[3, 0, 8])
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_dataset("synthetic", num_classes=1)


@pytest.mark.parametrize("shape", [(16,), (3, 32, 32), (3, 40, 24)])
def test_synthetic_any_shape_and_class_count(shape):
    s = build_dataset("synthetic", shape=list(shape), num_classes=100, n_train=64, n_val=8, n_test=8)
    assert s.input_shape == shape and s.num_classes == 100
    assert (s.augment is None) == (len(shape) != 3)
    assert torch.equal(build_dataset("synthetic", shape=list(shape), num_classes=100, n_train=64, n_val=8,
                                     n_test=8).train_x, s.train_x)


def test_env_runs_on_cifar100_files(tmp_path, teacher_cache):
    make_fake_cifar100(tmp_path, n_train=200, n_test=40)
    env = MultiTeacherKDEnv(EnvConfig(dataset="cifar100", data_dir=str(tmp_path), dataset_kwargs={"n_val": 40},
                                      teachers=["resnet8=random", "tiny_cnn=random"], student="tiny_cnn",
                                      augment=True, batch_size=16, max_steps=3, probe_size=16, device="cpu",
                                      teacher_cache_dir=teacher_cache, show_progress=False))
    env.reset(seed=0)
    for _ in range(3):
        *_, term, _, info = env.step(env.action_space.sample())
    assert term and 0.0 <= info["final_test_acc"] <= 1.0


# --- imagefolder ------------------------------------------------------------------------------
def test_imagefolder_splits_and_layout_errors(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"train": 10, "val": 2})
    s = build_dataset("imagefolder", data_dir=str(root), seed=0, image_size=16, num_workers=0)
    assert s.classes == ["ant", "bee", "cat"] and s.num_classes == 3 and s.input_shape == (3, 16, 16)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 6)  # 10% of train held out; test = val/
    assert not {p for p, _ in s.val.samples} & {p for p, _ in s.train.samples}
    x, y, i = s.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y in (0, 1, 2)
    s0 = build_dataset("imagefolder", data_dir=str(root), n_val=0, image_size=16, num_workers=0)
    assert len(s0.train) == 30 and s0.val.samples == s0.test.samples

    make_image_folder(root, {"test": 1})
    s_t = build_dataset("imagefolder", data_dir=str(root), image_size=16, num_workers=0)
    assert (len(s_t.train), len(s_t.val), len(s_t.test)) == (30, 6, 3)

    with pytest.raises(DatasetNotFoundError, match="train/<class>/<image>"):
        build_dataset("imagefolder", data_dir=str(tmp_path / "nowhere"))
    bad = make_image_folder(tmp_path / "bad", {"train": 1})
    make_image_folder(bad, {"val": 1}, classes=("ant", "bee", "dog"))
    with pytest.raises(DatasetNotFoundError, match=r"missing \['cat'\], extra \['dog'\]"):
        build_dataset("imagefolder", data_dir=str(bad))


def _batches(loader, n):
    return [tuple(t.clone() for t in loader.next()) for _ in range(n)]


def test_streaming_loader_is_a_pure_function_of_its_seed(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"train": 4, "val": 1})
    s = build_dataset("imagefolder", data_dir=str(root), n_val=0, image_size=16, num_workers=0)
    loader = s.train_loader(batch_size=5, augment=True, device=torch.device("cpu"))
    assert isinstance(loader, StreamingLoader) and loader.batches_per_epoch == 2
    loader.reset(7)
    first = _batches(loader, 3)
    assert loader.epoch == 1  # 2 batches per epoch; the last partial batch is dropped
    assert set(first[0][2].tolist()).isdisjoint(first[1][2].tolist())
    # Same seed, with decoding in 2 worker processes: identical batches, augmentation included.
    s2 = build_dataset("imagefolder", data_dir=str(root), n_val=0, image_size=16, num_workers=2)
    workers = s2.train_loader(batch_size=5, augment=True, device=torch.device("cpu"))
    workers.reset(7)
    for a, b in zip(first, _batches(workers, 3)):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    # Resume mid-epoch from a state dict.
    loader.reset(7)
    loader.next()
    state = loader.state_dict()
    tail = _batches(loader, 3)
    fresh = s.train_loader(batch_size=5, augment=True, device=torch.device("cpu"))
    fresh.load_state_dict(state)
    for a, b in zip(tail, _batches(fresh, 3)):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b))
    loader.reset(8)
    assert not torch.equal(_batches(loader, 1)[0][0], first[0][0])
    # Two ranks of a world of 2 get the two halves of each global batch, augmentation included.
    shards = []
    for rank in (0, 1):
        r = s.train_loader(batch_size=6, augment=True, device=torch.device("cpu"), rank=rank, world_size=2)
        r.reset(7)
        shards.append(_batches(r, 3))
    whole = s.train_loader(batch_size=6, augment=True, device=torch.device("cpu"))
    whole.reset(7)
    for b, full in enumerate(_batches(whole, 3)):
        for k in range(3):
            assert torch.equal(torch.cat([shards[0][b][k], shards[1][b][k]]), full[k])


def test_env_streams_imagefolder_and_evaluates_over_loaders(tmp_path, teacher_cache):
    root = make_image_folder(tmp_path / "imgs", {"train": 6, "val": 2})
    cfg = EnvConfig(dataset="imagefolder", data_dir=str(root), dataset_kwargs={"image_size": 16, "num_workers": 0},
                    teachers=["resnet8=random", "tiny_cnn=random"], student="tiny_cnn", augment=True,
                    batch_size=4, max_steps=3, probe_size=4, eval_batch_size=4, device="cpu",
                    teacher_cache_dir=teacher_cache, show_progress=False, granularity="sample")
    env = MultiTeacherKDEnv(cfg)
    assert env.engine.val_x is None and len(env.engine.test_set) == 6
    assert not env.engine.caches_teacher_outputs  # streamed: the default caches only in-memory datasets
    env.reset(seed=0)
    for _ in range(3):
        *_, term, _, info = env.step(env.action_space.sample())
    assert term
    # The streamed test accuracy equals a manual pass over the decoded test images.
    s = build_dataset("imagefolder", data_dir=str(root), image_size=16, num_workers=0)
    x = torch.stack([s.test[i][0] for i in range(len(s.test))])
    y = torch.tensor([s.test[i][1] for i in range(len(s.test))])
    env.engine.student.eval()
    with torch.no_grad():
        manual = (env.engine.student(x).logits.argmax(1) == y).float().mean().item()
    assert info["final_test_acc"] == pytest.approx(manual)
    with pytest.raises(ConfigError, match="cache_teacher_outputs: needs an in-memory dataset"):
        MultiTeacherKDEnv(cfg.replace(cache_teacher_outputs=True, augment=False))
    with pytest.raises(ConfigError, match="teacher_views: needs an in-memory dataset"):
        MultiTeacherKDEnv(cfg.replace(teacher_views=2, augment=True))
