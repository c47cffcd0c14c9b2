"""Fast-path features: device-resident loader, teacher-output cache, channels_last, bf16, compile."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mtkd_env.data import DeviceLoader, random_crop_flip
from mtkd_env.env import MultiTeacherKDEnv


def test_device_loader_covers_each_sample_once_per_epoch():
    x = torch.arange(48, dtype=torch.float32).view(48, 1, 1, 1).expand(48, 1, 4, 4).contiguous()
    y = torch.arange(48)
    loader = DeviceLoader(x, y, batch_size=8)
    loader.reset(0)
    for epoch in range(3):
        seen = torch.cat([loader.next()[1] for _ in range(loader.batches_per_epoch)])
        assert sorted(seen.tolist()) == list(range(48))
        assert loader.epoch == epoch
    loader.reset(0)
    first = loader.next()[1]
    loader.reset(0)
    assert torch.equal(first, loader.next()[1])


def test_device_loader_drops_the_partial_batch_and_augmentation_keeps_shapes():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, 8, 8, generator=g)
    loader = DeviceLoader(x, torch.zeros(50, dtype=torch.long), batch_size=16, augment=random_crop_flip(2, True))
    loader.reset(1)
    assert loader.batches_per_epoch == 3
    xb, _, idx = loader.next()
    assert xb.shape == (16, 3, 8, 8) and xb.dtype == torch.float32
    assert xb.min() >= 0 and xb.max() <= x.max()  # padding adds zeros, crops never invent values
    # every augmented image is a shifted (and maybe flipped) window of its source image
    for img, src in zip(xb, x[idx]):
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        windows = [padded[:, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(2)) for w in windows)


def test_teacher_output_cache_matches_live_teachers(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(cache_teacher_outputs=True))
    env.reset(seed=0)
    batch, eng = env.engine.batch, env.engine
    with torch.no_grad():
        live = torch.stack([t.model(batch.x).logits for t in eng.teachers])
        live_emb = [t.model(batch.x).embedding for t in eng.teachers]
    torch.testing.assert_close(batch.teacher_logits, live, rtol=1e-5, atol=1e-5)
    for a, b in zip(batch.teacher_embeddings, live_emb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = MultiTeacherKDEnv(tiny_config(cache_teacher_outputs=False))
    assert env.engine.caches_teacher_outputs and not ref.engine.caches_teacher_outputs
    o1, _ = env.reset(seed=3)
    o2, _ = ref.reset(seed=3)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-5)
    a = np.zeros(3, np.float32)
    for _ in range(3):
        r1 = env.step(a)
        r2 = ref.step(a)
    np.testing.assert_allclose(r1[0], r2[0], rtol=1e-3, atol=1e-4)


def test_teacher_cache_is_the_default_where_it_is_exact(tiny_config, monkeypatch):
    from mtkd_env.engine import teacher_cache
    from mtkd_env.runtime.errors import ConfigError

    assert MultiTeacherKDEnv(tiny_config()).engine.caches_teacher_outputs         # digits in memory, no augmentation
    assert not MultiTeacherKDEnv(tiny_config(augment=True)).engine.caches_teacher_outputs   # not exact: off
    assert not MultiTeacherKDEnv(tiny_config(cache_teacher_outputs=False)).engine.caches_teacher_outputs
    with pytest.raises(ConfigError, match="cache_teacher_outputs: teacher outputs can only be cached without"):
        tiny_config(cache_teacher_outputs=True, augment=True)
    monkeypatch.setattr(teacher_cache, "AUTO_CACHE_BYTES", 1024)  # a cache over the auto limit is not built ...
    assert not MultiTeacherKDEnv(tiny_config()).engine.caches_teacher_outputs
    assert MultiTeacherKDEnv(tiny_config(cache_teacher_outputs=True)).engine.caches_teacher_outputs  # ... unless asked


@pytest.mark.parametrize("reward", ["probe_loss_drop", "twin_val_loss"])
def test_teacher_cache_on_and_off_give_the_same_episode(tiny_config, reward):
    """Cached teachers change nothing but the float rounding of the teachers' forward (computed in
    chunks of `eval_batch_size` instead of per batch; float32, eps 1.2e-7): a convolution sums up
    to 64*3*3 = 576 products, so a teacher output may move by ~576 eps = 7e-5 relative at worst,
    and 12 SGD steps carry that into losses, observations and rewards at about the same order:
    rtol 1e-4. (On the CPU they are in fact equal bit for bit.)"""
    kw = dict(reward=reward, reward_interval=4, max_steps=12)
    runs = []
    for cache in (True, False):
        env = MultiTeacherKDEnv(tiny_config(cache_teacher_outputs=cache, **kw))
        obs, _ = env.reset(seed=3)
        rows = [(obs, 0.0, 0.0)]
        for a in np.random.default_rng(0).uniform(-1, 1, (12, 3)).astype(np.float32):
            obs, r, term, _, info = env.step(a)
            rows.append((obs, r, info["loss"]))
        assert term
        runs.append((rows, info["final_val_acc"], info["final_test_acc"]))
    (cached, *final_c), (live, *final_l) = runs
    for (o1, r1, l1), (o2, r2, l2) in zip(cached, live):
        np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-6)
        assert l1 == pytest.approx(l2, rel=1e-4) and r1 == pytest.approx(r2, rel=1e-4, abs=1e-6)
    assert final_c == pytest.approx(final_l, rel=1e-4)


def test_channels_last_gives_the_same_step(synthetic_config):
    kw = dict(dataset_kwargs={"shape": [3, 8, 8], "num_classes": 4, "n_train": 64, "n_val": 32, "n_test": 32},
              teachers=["cnn=random", "tiny_resnet=random"])
    ref = MultiTeacherKDEnv(synthetic_config(**kw))
    cl = MultiTeacherKDEnv(synthetic_config(channels_last=True, **kw))
    o1, _ = ref.reset(seed=0)
    o2, _ = cl.reset(seed=0)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-5)
    a = np.zeros(2, np.float32)
    np.testing.assert_allclose(ref.step(a)[0], cl.step(a)[0], rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_and_fp32_losses_are_close(synthetic_config):
    kw = dict(device="cuda", dataset_kwargs={"shape": [3, 16, 16], "num_classes": 10, "n_train": 256,
                                             "n_val": 64, "n_test": 64},
              teachers=["cnn=random", "tiny_resnet=random"], batch_size=64)
    fp32 = MultiTeacherKDEnv(synthetic_config(**kw))
    bf16 = MultiTeacherKDEnv(synthetic_config(amp="bf16", **kw))
    fp32.reset(seed=0)
    bf16.reset(seed=0)
    a = np.zeros(2, np.float32)
    for _ in range(3):
        l1 = fp32.step(a)[4]["loss"]
        l2 = bf16.step(a)[4]["loss"]
        assert l2 == pytest.approx(l1, rel=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_trajectory_and_single_transfer(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(device="cuda", reward="neg_loss"))
    obs, _ = env.reset(seed=0)
    assert env.engine.student.fc.weight.is_cuda and env.observation_space.contains(obs)
    obs, r, term, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert np.isfinite(r) and env.observation_space.contains(obs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_single_gpu_torchrun_with_batchnorm_student(teacher_cache):
    """DDP on CUDA re-broadcasts BN buffers on every wrapped forward; evaluation forwards between a
    step's forward and its backward must not go through the wrapper (an in-place version error)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           "-m", "mtkd_env", "--env", "device=cuda", "dataset=synthetic", "student=tiny_cnn",
                           "teachers=[cnn=random,tiny_resnet=random]", "max_steps=4", "batch_size=32",
                           "show_progress=false", f"teacher_cache_dir={teacher_cache}",
                           "dataset_kwargs={shape: [3, 16, 16], num_classes: 10, n_train: 256}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "world size 1, device cuda" in proc.stdout


def test_compile_mode_is_validated(synthetic_config):
    from mtkd_env.config import ConfigError

    with pytest.raises(ConfigError, match=r"compile_mode: expected one of \['default', 'reduce-overhead'"):
        synthetic_config(compile_mode="fastest")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_iteration_never_waits_for_the_host(synthetic_config):
    """The distillation iteration (update, next batch with augmentation, across an epoch boundary)
    issues no host synchronisation: the env's one device->host copy is the only one."""
    kw = dict(device="cuda", augment=True, cudnn_benchmark=True, batch_size=16,
              dataset_kwargs={"shape": [3, 16, 16], "num_classes": 10, "n_train": 64, "n_val": 32, "n_test": 32},
              teachers=["cnn=random", "tiny_resnet=random"])
    env = MultiTeacherKDEnv(synthetic_config(**kw))
    env.reset(seed=0)
    engine = env.engine
    w = torch.full((2,), 0.5, device="cuda")
    engine.apply(w, w)
    engine.advance()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):  # 4 batches per epoch
            engine.apply(w, w)
            engine.advance()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert engine.loader.epoch >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reduce_overhead_compile_follows_the_eager_step(synthetic_config):
    kw = dict(device="cuda", reward="neg_loss", teachers=["cnn=random", "tiny_resnet=random"],
              dataset_kwargs={"shape": [3, 16, 16], "num_classes": 10, "n_train": 256, "n_val": 64, "n_test": 64},
              batch_size=64)
    eager = MultiTeacherKDEnv(synthetic_config(**kw))
    graphs = MultiTeacherKDEnv(synthetic_config(compile=True, compile_mode="reduce-overhead", **kw))
    eager.reset(seed=0)
    graphs.reset(seed=0)
    a = np.zeros(2, np.float32)
    for _ in range(4):
        assert graphs.step(a)[4]["loss"] == pytest.approx(eager.step(a)[4]["loss"], rel=1e-2)
