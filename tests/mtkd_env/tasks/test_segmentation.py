"""The segmentation task: its loss against a hand computation, the per-image statistics, an episode
on the embedded scenes through gym.make, the checkers, the formula baselines, and bad masks."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import mtkd_env
from mtkd_env import EnvConfig
from mtkd_env.models import ModelOutput
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.tasks import get_task
from mtkd_env.tasks.batch import loss_terms
from mtkd_env.tasks.segmentation import IGNORE_INDEX

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "size": 16}


@pytest.fixture
def seg_config(teacher_cache):
    def make(**overrides) -> EnvConfig:
        base = dict(task="segmentation", dataset="scenes", dataset_kwargs=dict(TINY),
                    teachers=["seg_cnn", "seg_tiny", "seg_tiny=noisy"], student="seg_tiny",
                    teacher_cache_dir=teacher_cache, teacher_epochs=2, max_steps=4, batch_size=16, probe_size=16,
                    eval_batch_size=32, show_progress=False, device="cpu")
        base.update(overrides)
        return EnvConfig(**base)

    return make


def _outputs(g: torch.Generator, b: int, c: int, h: int, w: int) -> ModelOutput:
    logits = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    fmap = torch.randn(b, 4, 2, 2, generator=g, dtype=torch.float64)
    return ModelOutput(logits, fmap, fmap.mean((2, 3)))


def test_pixel_kd_ce_and_statistics_match_a_hand_computation():
    task, g = get_task("segmentation"), torch.Generator().manual_seed(0)
    b, c, h, w, m, temp = 2, 3, 3, 2, 2, 2.0
    t_outs = [_outputs(g, b, c, h, w) for _ in range(m)]
    s_out = _outputs(g, b, c, h, w)
    y = torch.randint(0, c, (b, h, w), generator=g)
    y[0, 0, 0] = y[1, 2, 1] = IGNORE_INDEX
    teacher = task.teacher_stats(t_outs, y, temp)
    batch = task.measure(None, y, None, t_outs, teacher, s_out, None, temp, keep_maps=False)
    kl, ce, t_ce, acc, ent = (torch.zeros(b, m, dtype=torch.float64) for _ in range(5))
    s_ce = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        pixels = [(p, q) for p in range(h) for q in range(w) if y[i, p, q] != IGNORE_INDEX]
        for p, q in pixels:
            ls = torch.log_softmax(s_out.logits[i, :, p, q] / temp, 0)
            s_ce[i] -= torch.log_softmax(s_out.logits[i, :, p, q], 0)[y[i, p, q]] / len(pixels)
            for k in range(m):
                z = t_outs[k].logits[i, :, p, q]
                lt = torch.log_softmax(z / temp, 0)
                kl[i, k] += temp ** 2 * (lt.exp() * (lt - ls)).sum() / len(pixels)
                l1 = torch.log_softmax(z, 0)
                t_ce[i, k] -= l1[y[i, p, q]] / len(pixels)
                acc[i, k] += float(z.argmax() == y[i, p, q]) / len(pixels)
                ent[i, k] -= (l1.exp() * l1).sum() / len(pixels)
    tol = dict(rtol=1e-10, atol=1e-12)  # float64 throughout
    torch.testing.assert_close(batch.kl, kl, **tol)
    torch.testing.assert_close(batch.student_ce, s_ce, **tol)
    torch.testing.assert_close(batch.teacher_ce, t_ce, **tol)
    torch.testing.assert_close(batch.teacher_correct, acc.float())  # 0/1 counts: float32 as classification
    torch.testing.assert_close(batch.teacher_entropy, ent, **tol)
    # the weighted loss: CE + alpha * sum_m w KL per image, weights per image
    wl = torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=torch.float64)
    total, kd, _ = loss_terms(batch, wl, wl, kd_alpha=0.5, feat_beta=0.0)
    torch.testing.assert_close(total, s_ce + 0.5 * (wl * kl).sum(1), **tol)
    assert math.isclose(float(kd), float((wl * kl).sum(1).mean()), rel_tol=1e-12)


def test_statistics_are_per_image_and_an_episode_runs_through_gym_make(seg_config):
    env = gym.make(mtkd_env.ENV_ID, config=seg_config())
    obs, _ = env.reset(seed=0)
    batch = env.unwrapped.engine.batch
    for name in ("kl", "cos", "teacher_ce", "teacher_correct", "teacher_entropy", "feat_mse"):
        assert getattr(batch, name).shape == (16, 3), name
    assert batch.student_ce.shape == batch.student_correct.shape == (16,)
    assert batch.teacher_logits.shape == (3, 16, 5) and batch.y.shape == (16, 16, 16)
    assert obs.shape == env.observation_space.shape and np.isfinite(obs).all()
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
        assert np.isfinite(reward)
    assert steps == 4 and 0.0 <= info["final_test_acc"] <= 1.0  # the test metric is the mIoU
    assert 0.0 <= env.unwrapped.teacher_val_acc.min() and env.unwrapped.teacher_val_acc.max() <= 1.0


@pytest.mark.parametrize("granularity", ["teacher", "sample"])
def test_gymnasium_and_sb3_checkers_pass(seg_config, granularity):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(mtkd_env.ENV_ID, config=seg_config(granularity=granularity))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)


@pytest.mark.parametrize("name", ["aver", "drop-worst", "best", "ebkd", "ca-mkd", "random", "no-kd"])
def test_formula_baselines_weight_each_image(seg_config, name):
    from baselines.policies import make_policy

    policy = make_policy(name, seed=0)
    env = gym.make(mtkd_env.ENV_ID, config=seg_config(**policy.env_overrides)).unwrapped
    env.reset(seed=0)
    policy.start_episode(env, 0)
    w_logit, w_feat = policy.act()
    assert w_logit.shape == ((16, 3) if policy.per_sample else (3,)) and w_feat is None
    if name != "no-kd":
        np.testing.assert_allclose(w_logit.sum(-1), 1.0, rtol=1e-5)
    if name == "ca-mkd":  # lower per-image CE, more weight
        ce = env.engine.batch.teacher_ce.numpy()
        assert (np.argsort(w_logit, 1)[:, -1] == np.argsort(ce, 1)[:, 0]).all()
    env.step_weights(w_logit, w_feat)


def test_bad_masks_and_a_task_mismatch_are_one_line_errors():
    task = get_task("segmentation")
    with pytest.raises(ConfigError, match=r"^scenes train: mask value 7 is not a class id 0\.\.4 or 255") as exc:
        task.check_targets(torch.tensor([[[0, 7], [1, 2]]]), 5, "scenes train")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="has no labelled pixel"):
        task.check_targets(torch.full((1, 2, 2), IGNORE_INDEX), 5, "x")
    with pytest.raises(ConfigError, match=r"integer masks \(N, H, W\)"):
        task.check_targets(torch.zeros(3), 5, "x")
    with pytest.raises(ConfigError, match="dataset 'scenes' has segmentation targets but task is 'classification'"):
        mtkd_env.engine.DistillationEngine(EnvConfig(dataset="scenes", dataset_kwargs=dict(TINY), student="seg_tiny",
                                                     teachers=["seg_tiny=random"], device="cpu"))
    with pytest.raises(ConfigError, match="cache_teacher_outputs: caches classification outputs only"):
        mtkd_env.engine.DistillationEngine(EnvConfig(task="segmentation", dataset="scenes", cache_teacher_outputs=True,
                                                     student="seg_tiny", teachers=["seg_tiny=random"], device="cpu"))
    with pytest.raises(ConfigError, match=r"^task: unknown task 'segmantation'.*did you mean 'segmentation'"):
        mtkd_env.engine.DistillationEngine(EnvConfig(task="segmantation", device="cpu"))
