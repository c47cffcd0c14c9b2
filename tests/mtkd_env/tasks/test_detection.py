"""The detection task: assignment and loss against a hand computation, the per-image statistics, an
episode on the embedded scene boxes through gym.make, the checkers, the baselines, COCO mAP through
torchmetrics, and bad boxes."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import mtkd_env
from mtkd_env import EnvConfig
from mtkd_env.models.detection import DetectionOutput
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.tasks import get_task
from mtkd_env.tasks.batch import loss_terms
from mtkd_env.tasks.detection import assign

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "size": 16}


@pytest.fixture
def det_config(teacher_cache):
    def make(**overrides) -> EnvConfig:
        base = dict(task="detection", dataset="scene_boxes", dataset_kwargs=dict(TINY),
                    teachers=["det_cnn", "det_tiny", "det_tiny=noisy"], student="det_tiny",
                    teacher_cache_dir=teacher_cache, teacher_epochs=2, max_steps=4, batch_size=16, probe_size=16,
                    eval_batch_size=32, show_progress=False, device="cpu")
        base.update(overrides)
        return EnvConfig(**base)

    return make


def _output(g: torch.Generator, centers: torch.Tensor, b: int, c: int) -> DetectionOutput:
    n = len(centers)
    logits = torch.randn(b, n, c + 1, generator=g, dtype=torch.float64)
    dist = 0.5 + 2 * torch.rand(b, n, 4, generator=g, dtype=torch.float64)
    boxes = torch.cat([centers - dist[..., :2], centers + dist[..., 2:]], -1)
    fmap = torch.randn(b, 3, 2, 2, generator=g, dtype=torch.float64)
    return DetectionOutput(logits, fmap, fmap.mean((2, 3)), boxes, centers)


def test_assignment_loss_kd_and_statistics_match_a_hand_computation():
    def giou_loss(p, t, eps=1e-7):  # GIoU loss, with the eps that torchvision's loss adds to both denominators
        inter = (min(p[2], t[2]) - max(p[0], t[0])).clamp_min(0) * (min(p[3], t[3]) - max(p[1], t[1])).clamp_min(0)
        union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
        hull = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
        return 1 - (inter / (union + eps) - (hull - union) / (hull + eps))

    task, g = get_task("detection"), torch.Generator().manual_seed(0)
    centers = torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0]], dtype=torch.float64)
    # image 0: a large box over every location and a small one over (3, 3) (which wins it: smaller);
    # image 1: no object
    y = torch.tensor([[[0, 0, 0, 4, 4], [2, 2, 2, 4, 4]], [[-1] * 5, [-1] * 5]], dtype=torch.float64)
    cls, box, positive = assign(centers, y)
    assert cls.tolist() == [[1, 1, 1, 3], [0, 0, 0, 0]] and positive[0].all() and not positive[1].any()
    temp, c, m = 2.0, 3, 2
    t_outs = [_output(g, centers, 2, c) for _ in range(m)]
    s_out = _output(g, centers, 2, c)
    teacher = task.teacher_stats(t_outs, y, temp)
    batch = task.measure(None, y, None, t_outs, teacher, s_out, None, temp, keep_maps=False)

    def image_loss(out, i):
        ce = sum(-torch.log_softmax(out.logits[i, l], 0)[cls[i, l]] for l in range(4)) / 4
        if not positive[i].any():
            return ce
        return ce + sum(giou_loss(out.boxes[i, l], box[i, l]) for l in range(4)) / 4

    kl = torch.zeros(2, m, dtype=torch.float64)
    for i in range(2):
        for k in range(m):
            for l in range(4):
                lt = torch.log_softmax(t_outs[k].logits[i, l] / temp, 0)
                ls = torch.log_softmax(s_out.logits[i, l] / temp, 0)
                kl[i, k] += temp ** 2 * (lt.exp() * (lt - ls)).sum() / 4
    tol = dict(rtol=1e-10, atol=1e-12)  # float64 throughout
    torch.testing.assert_close(batch.kl, kl, **tol)
    torch.testing.assert_close(batch.student_ce, torch.stack([image_loss(s_out, i) for i in range(2)]), **tol)
    torch.testing.assert_close(batch.teacher_ce, torch.tensor([[float(image_loss(t_outs[k], i)) for k in range(m)]
                                                               for i in range(2)], dtype=torch.float64), **tol)
    assert batch.teacher_correct.shape == batch.teacher_entropy.shape == (2, m)
    wl = torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    total, kd, _ = loss_terms(batch, wl, wl, kd_alpha=1.0, feat_beta=0.0)
    torch.testing.assert_close(total, batch.student_ce + (wl * kl).sum(1), **tol)
    assert math.isclose(float(kd), float((wl * kl).sum(1).mean()), rel_tol=1e-12)


def test_coco_map_of_perfect_and_of_shifted_detections():
    from torchmetrics.detection import MeanAveragePrecision

    from mtkd_env.tasks.detection import _targets, decode

    y = torch.tensor([[[1, 2, 2, 10, 10], [0, 12, 3, 20, 9]]], dtype=torch.float32)
    logits = torch.full((1, 2, 3), -10.0)
    logits[0, 0, 2] = logits[0, 1, 1] = 10.0   # location 0 says class 1, location 1 class 0
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(decode(logits, y[:, :, 1:].clone()), _targets(y))
    assert float(metric.compute()["map"]) == pytest.approx(1.0)
    metric.reset()
    metric.update(decode(logits, y[:, :, 1:] + 4.0), _targets(y))  # IoU 16/112 and 12/84: below 0.5
    assert float(metric.compute()["map"]) == pytest.approx(0.0)


def test_statistics_are_per_image_and_an_episode_runs_through_gym_make(det_config):
    env = gym.make(mtkd_env.ENV_ID, config=det_config())
    obs, _ = env.reset(seed=0)
    batch = env.unwrapped.engine.batch
    for name in ("kl", "cos", "teacher_ce", "teacher_correct", "teacher_entropy", "feat_mse"):
        assert getattr(batch, name).shape == (16, 3), name
    assert batch.student_ce.shape == (16,) and batch.teacher_logits.shape == (3, 16, 4)
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
        assert np.isfinite(reward)
    assert steps == 4 and 0.0 <= info["final_test_acc"] <= 1.0  # the test metric is COCO mAP


@pytest.mark.parametrize("granularity", ["teacher", "sample"])
def test_gymnasium_and_sb3_checkers_pass(det_config, granularity):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(mtkd_env.ENV_ID, config=det_config(granularity=granularity))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)


@pytest.mark.parametrize("name", ["aver", "drop-worst", "ebkd", "ca-mkd"])
def test_formula_baselines_weight_each_image(det_config, name):
    from baselines.policies import make_policy

    policy = make_policy(name, seed=0)
    env = gym.make(mtkd_env.ENV_ID, config=det_config(**policy.env_overrides)).unwrapped
    env.reset(seed=0)
    policy.start_episode(env, 0)
    w_logit, _ = policy.act()
    assert w_logit.shape == ((16, 3) if policy.per_sample else (3,))
    np.testing.assert_allclose(w_logit.sum(-1), 1.0, rtol=1e-5)
    env.step_weights(w_logit, None)


def test_bad_boxes_are_one_line_errors():
    task = get_task("detection")
    good = torch.tensor([[[0, 1, 1, 5, 5], [-1, -1, -1, -1, -1]]], dtype=torch.float32)
    task.check_targets(good, 4, "x", (3, 8, 8))
    cases = [(torch.tensor([[[0, 1, 1, 9, 5]]], dtype=torch.float32), r"box \[1\.0, 1\.0, 9\.0, 5\.0\] is out of the 8x8 image"),
             (torch.tensor([[[0, 4, 1, 4, 5]]], dtype=torch.float32), r"is empty; expected x1 < x2"),
             (torch.tensor([[[7, 1, 1, 4, 5]]], dtype=torch.float32), r"box label 7 is not a class id 0\.\.3"),
             (torch.zeros(2, 3), r"detection needs float targets \(N, K, 5\)")]
    for y, message in cases:
        with pytest.raises(ConfigError, match=message) as exc:
            task.check_targets(y, 4, "x", (3, 8, 8))
        assert "\n" not in str(exc.value)
