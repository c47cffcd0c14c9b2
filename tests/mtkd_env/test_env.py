"""MultiTeacherKDEnv: checkers, determinism, actions, rewards, cache, termination, divergence."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mtkd_env
from mtkd_env import teachers as teachers_mod
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.mdp.rewards import paper_reward_vector


def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    traj = [obs]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        traj.append((obs, r, term, info["loss"], info["weights_logit"]))
        if term:
            break
    return traj


def assert_same(t1, t2):
    assert len(t1) == len(t2)
    np.testing.assert_array_equal(t1[0], t2[0])
    for a, b in zip(t1[1:], t2[1:]):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        np.testing.assert_array_equal(a[4], b[4])


SELECTION = {"granularity": "sample", "action_transform": "select", "sample_obs_student": True}


@pytest.mark.parametrize("interface", [{"granularity": "teacher"}, {"granularity": "sample"}, SELECTION],
                         ids=["teacher", "sample", "sample-select"])
def test_gymnasium_and_sb3_checkers_pass(tiny_config, interface):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(mtkd_env.ENV_ID, config=tiny_config(**interface))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns that a (B, F) observation is neither image nor vector
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    assert env.observation_space.contains(env.reset(seed=0)[0])


def test_default_env_spaces_and_feature_names(teacher_cache):
    env = gym.make(mtkd_env.ENV_ID, teacher_cache_dir=teacher_cache, show_progress=False)
    base = env.unwrapped
    assert base.config.dataset == "digits" and len(base.teacher_names) >= 3
    assert "mlp=noisy" in base.teacher_names
    assert base.observation_space.shape == (5 * base.num_teachers + 4,)
    assert len(base.feature_names) == base.observation_space.shape[0]
    assert np.all(np.isfinite(base.observation_space.low)) and np.all(np.isfinite(base.observation_space.high))
    assert base.action_space.shape == (base.num_teachers,)
    # The unreliable teacher is clearly worse than the others on validation data.
    noisy = base.teacher_names.index("mlp=noisy")
    assert base.teacher_val_acc[noisy] < 0.5 < min(np.delete(base.teacher_val_acc, noisy))


def test_sample_granularity_shapes(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(granularity="sample", separate_feature_weights=True))
    obs, _ = env.reset(seed=0)
    m, b = env.num_teachers, env.batch_size
    width = sum(3 + d + env.engine.num_classes for d in env.engine.teacher_embedding_dims)
    assert obs.shape == (b, width) and env.action_space.shape == (b, 2 * m)
    assert env.sample_layout[-1][2].stop == width
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["weights_logit"].shape == (b, m) and info["weights_feat"].shape == (b, m)
    np.testing.assert_allclose(info["weights_logit"].sum(1), 1.0, atol=1e-5)
    assert info["reward_vector"].shape == (b,)


def test_same_seed_same_trajectory_and_other_seed_differs(tiny_config):
    env = MultiTeacherKDEnv(tiny_config())
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, env.action_space.shape).astype(np.float32) for _ in range(6)]
    first = rollout(env, 3, actions)
    second = rollout(MultiTeacherKDEnv(tiny_config()), 3, actions)
    assert_same(first, second)
    other = rollout(env, 4, actions)
    assert not np.array_equal(first[0], other[0])


def test_action_validation_leaves_student_untouched(tiny_config):
    env = MultiTeacherKDEnv(tiny_config())
    env.reset(seed=0)
    before = [p.detach().clone() for p in env.engine.student.parameters()]
    for bad in (np.zeros(env.num_teachers + 1, np.float32), np.zeros((2, env.num_teachers), np.float32)):
        with pytest.raises(ValueError, match=r"expected \(3,\)"):
            env.step(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.0, np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        env.step_weights(np.array([0.5, -0.1, 0.6], np.float32))
    assert env.engine.iteration == 0
    for p, q in zip(before, env.engine.student.parameters()):
        assert torch.equal(p, q)


def test_action_transforms_and_inverse(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(action_transform="linear"))
    w = np.array([0.7, 0.2, 0.1], np.float32)
    np.testing.assert_allclose(env.action_to_weights(env.weights_to_action(w))[0], w, atol=1e-6)
    np.testing.assert_allclose(env.action_to_weights(-np.ones(3, np.float32))[0], 1 / 3, atol=1e-7)
    env = MultiTeacherKDEnv(tiny_config(action_temperature=0.5))
    a = np.array([1.0, 0.0, -1.0], np.float32)
    expected = np.exp(a / 0.5) / np.exp(a / 0.5).sum()
    np.testing.assert_allclose(env.action_to_weights(a)[0], expected, rtol=1e-6)
    np.testing.assert_allclose(env.action_to_weights(env.weights_to_action(expected))[0], expected, rtol=1e-5)


def test_loss_matches_formula(tiny_config):
    cfg = tiny_config(kd_alpha=0.7, feat_beta=3.0, kd_temperature=2.0)
    env = MultiTeacherKDEnv(cfg)
    env.reset(seed=0)
    batch, engine = env.engine.batch, env.engine
    w = torch.tensor([0.5, 0.3, 0.2])
    wf = torch.tensor([0.1, 0.1, 0.8])
    total, kd, feat = engine.loss_terms(batch, w, wf)
    with torch.no_grad():
        s = engine.student(batch.x)
        # the same student forward (train mode) as prepare(); recompute everything by hand
        expected = F.cross_entropy(batch.student_logits, batch.y, reduction="none")
        for m, t in enumerate(engine.teachers):
            out = t.model(batch.x)
            kl = F.kl_div(F.log_softmax(batch.student_logits / 2.0, -1), F.softmax(out.logits / 2.0, -1),
                          reduction="none").sum(-1) * 4.0
            proj = engine.projectors[m](s.feature_map)
            mse = ((proj - out.feature_map) ** 2).flatten(1).mean(1)
            expected = expected + 0.7 * w[m] * kl + 3.0 * wf[m] * mse
    torch.testing.assert_close(total.detach(), expected, rtol=1e-4, atol=1e-4)


def test_teachers_get_no_gradient_and_step_updates_student(tiny_config):
    env = MultiTeacherKDEnv(tiny_config())
    env.reset(seed=0)
    t_before = [p.clone() for t in env.engine.teachers for p in t.model.parameters()]
    s_before = [p.clone() for p in env.engine.student.parameters()]
    env.step(env.action_space.sample())
    assert all(p.grad is None and not p.requires_grad for t in env.engine.teachers for p in t.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(t_before, [p for t in env.engine.teachers for p in t.model.parameters()]))
    assert any(not torch.equal(a, b) for a, b in zip(s_before, env.engine.student.parameters()))


def test_paper_reward(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(reward="paper"))
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.zeros(3, np.float32))
    vec = info["reward_vector"]
    assert isinstance(r, float) and 0.0 <= r <= 1.0
    assert vec.min() >= 0 and vec.max() <= 1 and (vec == 0).any()
    assert r == pytest.approx(float(vec.mean()), abs=1e-6)
    loss = np.array([1.0, 2.0, 3.0, 4.0])
    z = (-loss - (-loss).mean()) / (-loss).std(ddof=1)
    np.testing.assert_allclose(paper_reward_vector(loss), np.clip(z, 0, 1))
    assert np.all(paper_reward_vector(np.array([5.0])) == 0)


def test_probe_loss_drop_reward(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(reward="probe_loss_drop", max_steps=1))
    env.reset(seed=0)
    before = float(env.engine.probe_loss())
    _, r, term, _, _ = env.step(np.zeros(3, np.float32))
    assert term and r == pytest.approx(before - float(env.engine.probe_loss()), abs=1e-5)
    # over an episode the rewards telescope: total = probe loss at reset - probe loss at the end
    env = MultiTeacherKDEnv(tiny_config(reward="probe_loss_drop", max_steps=5))
    env.reset(seed=0)
    before = float(env.engine.probe_loss())
    total = sum(env.step(np.zeros(3, np.float32))[1] for _ in range(5))
    assert total == pytest.approx(before - float(env.engine.probe_loss()), abs=1e-4)


def test_neg_loss_and_callable_reward(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(reward="neg_loss"))
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.zeros(3, np.float32))
    assert r == pytest.approx(-info["loss"])
    env = MultiTeacherKDEnv(tiny_config(reward=lambda res: 2.0 * res.student_acc))
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.zeros(3, np.float32))
    assert r == pytest.approx(2.0 * info["student_acc"]) and isinstance(r, float)


def test_val_acc_delta_every_k_steps(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(reward="val_acc_delta", reward_interval=3, max_steps=7, lr=0.2))
    env.reset(seed=0)
    start = float(env.engine.val_accuracy())
    rewards, vals = [], []
    for _ in range(7):
        _, r, term, _, info = env.step(np.zeros(3, np.float32))
        rewards.append(r)
        vals.append(info.get("val_acc"))
    assert [v is not None for v in vals] == [False, False, True, False, False, True, True]
    assert all(r == 0.0 for r, v in zip(rewards, vals) if v is None)
    assert rewards[2] == pytest.approx(vals[2] - start)
    assert rewards[5] == pytest.approx(vals[5] - vals[2])
    assert sum(rewards) == pytest.approx(vals[6] - start)
    assert term


def test_unknown_reward_is_clear(tiny_config):
    with pytest.raises(ValueError, match="unknown reward 'nope'; known rewards"):
        MultiTeacherKDEnv(tiny_config(reward="nope"))


def test_termination_info_and_episode_length(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(max_steps=None, epochs=1.0, steps_per_action=4))
    _, info = env.reset(seed=0)
    per_epoch = env.engine.loader.batches_per_epoch
    assert info["total_steps"] == -(-per_epoch // 4) == env.total_steps
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(np.zeros(3, np.float32))
        steps += 1
        assert not trunc
        if term:
            break
    assert steps == env.total_steps and env.engine.iteration == per_epoch
    assert info["final_val_acc"] == pytest.approx(float(env.engine.val_accuracy()))
    assert info["final_test_acc"] == pytest.approx(float(env.engine.test_accuracy()))
    assert 0.0 <= info["final_test_acc"] <= 1.0 and info["diverged"] is False


def test_divergence_ends_episode_with_penalty(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(divergence_penalty=-5.0))
    env.reset(seed=0)
    with torch.no_grad():
        for p in env.engine.student.parameters():
            p.fill_(float("nan"))
    env.engine.batch = env.engine.prepare()
    obs, r, term, trunc, info = env.step(np.zeros(3, np.float32))
    assert info["diverged"] is True and term is True and r == -5.0
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)


def test_stepping_after_the_end_is_an_error(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(max_steps=1))
    env.reset(seed=0)
    assert env.step(np.zeros(3, np.float32))[2]
    iteration = env.engine.iteration
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(np.zeros(3, np.float32))
    assert env.engine.iteration == iteration
    env.reset(seed=1)
    env.step(np.zeros(3, np.float32))


def test_final_accuracy_sees_no_untrained_forward(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(max_steps=3))
    env.reset(seed=0)
    for _ in range(3):
        info = env.step(np.zeros(3, np.float32))[4]
    tracked = [m.num_batches_tracked.item() for m in env.engine.student.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    assert set(tracked) == {3}  # one train-mode forward per iteration, none for a next batch
    assert info["final_val_acc"] == pytest.approx(float(env.engine.val_accuracy()))


def test_single_teacher_works(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(teachers=["mlp"], granularity="sample"))
    env.reset(seed=0)
    _, r, _, _, info = env.step(env.action_space.sample())
    assert np.isfinite(r) and np.allclose(info["weights_logit"], 1.0)


def test_teacher_cache_reused(tiny_config, monkeypatch):
    MultiTeacherKDEnv(tiny_config())  # populates the session cache

    def fail(*args, **kwargs):
        raise AssertionError("a cached teacher was trained again")

    monkeypatch.setattr(teachers_mod, "train_model", fail)
    env = MultiTeacherKDEnv(tiny_config())
    assert len(env.engine.teachers) == 3


def test_engine_state_roundtrip_continues_identically(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(max_steps=10))
    env.reset(seed=5)
    act = np.array([0.3, -0.2, 0.9], np.float32)
    for _ in range(3):
        env.step(act)
    state = env.state_dict()
    tail = [env.step(act)[:4] for _ in range(4)]
    env2 = MultiTeacherKDEnv(tiny_config(max_steps=10))
    env2.reset(seed=99)
    env2.load_state_dict(state)
    tail2 = [env2.step(act)[:4] for _ in range(4)]
    for (o1, r1, t1, _), (o2, r2, t2, _) in zip(tail, tail2):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 and t1 == t2
    for p, q in zip(env.engine.student.state_dict().values(), env2.engine.student.state_dict().values()):
        assert torch.equal(p, q)


def test_module_demo_runs(teacher_cache):
    out = subprocess.run([sys.executable, "-m", "mtkd_env", "--env", f"teacher_cache_dir={teacher_cache}",
                          "teacher_epochs=3", "max_steps=5", "show_progress=false"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final test acc" in out.stdout
