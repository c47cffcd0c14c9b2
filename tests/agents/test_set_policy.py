"""TeacherSetPolicy: untrained ≈ uniform, permutation-equivariant, any pool and batch size, its
distributions' log-probabilities, and stock SB3 PPO training it per teacher and per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import PPO

from mtkd_env import EnvConfig
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.mdp.actions import to_simplex
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.scenarios import SCENARIOS

from agents import api
from agents.set_policy import TeacherSetPolicy, layout_for, resolve_policy

TINY_PPO = {"n_steps": 8, "batch_size": 8, "n_epochs": 2, "policy_kwargs": {"hidden": 16, "log_std_init": -1.0}}


class _Spaces:
    """A spaces-only env for building a policy without training teachers."""

    metadata: dict = {}
    render_mode = None

    def __init__(self, obs_shape, act_shape):
        self.observation_space = spaces.Box(-1e4, 1e4, obs_shape, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, act_shape, dtype=np.float32)

    def reset(self, seed=None, options=None):  # pragma: no cover - never stepped
        raise RuntimeError

    def step(self, action):  # pragma: no cover - never stepped
        raise RuntimeError


def _policy(layout, obs_shape, act_shape, use_sde=True, sharpen=False, seed=0, **kwargs):
    import gymnasium as gym

    from stable_baselines3.common.vec_env import DummyVecEnv

    class Env(_Spaces, gym.Env):
        pass

    venv = DummyVecEnv([lambda: Env(obs_shape, act_shape)])
    model = PPO(TeacherSetPolicy, venv, seed=seed, use_sde=use_sde, n_steps=8, batch_size=8, device="cpu",
                policy_kwargs={"layout": layout, "hidden": 16, **kwargs})
    if sharpen:  # a non-trivial head: the default init (gain 0.01) gives near-zero actions
        torch.manual_seed(seed)
        torch.nn.init.normal_(model.policy.action_net.linear.weight, std=1.0)
    return model.policy


TEACHER_LAYOUT = {"granularity": "teacher", "columns": "TTTGG"}  # ce, acc, entropy per teacher; progress, lr


def _teacher_obs(rng, m):
    return rng.uniform(0, 2, size=3 * m + 2).astype(np.float32)


def _permute_teacher_obs(obs, m, perm):
    blocks = [obs[k * m:(k + 1) * m][perm] for k in range(3)]
    return np.concatenate(blocks + [obs[3 * m:]])


def test_untrained_policy_gives_about_uniform_weights():
    rng = np.random.default_rng(0)
    policy = _policy(TEACHER_LAYOUT, (3 * 4 + 2,), (4,))
    for _ in range(5):
        w = to_simplex(policy.act(_teacher_obs(rng, 4)), "softmax", 1.0)
        np.testing.assert_allclose(w, 0.25, atol=0.01)
    sample = _policy({"granularity": "sample", "per_teacher": 3, "logits": False, "student": False}, (16, 9), (16, 3))
    w = to_simplex(sample.act(rng.uniform(0, 3, size=(16, 9)).astype(np.float32)), "softmax", 1.0)
    assert w.shape == (16, 3)
    np.testing.assert_allclose(w, 1 / 3, atol=0.01)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_permuting_teachers_permutes_the_actions_for_any_pool_size(m):
    """Trained on 3 teachers, the policy acts on pools of 2, 3 and 5 and commutes with every reorder."""
    rng = np.random.default_rng(m)
    policy = _policy(TEACHER_LAYOUT, (3 * 3 + 2,), (3,), sharpen=True)
    for _ in range(3):
        obs, perm = _teacher_obs(rng, m), rng.permutation(m)
        a = policy.act(obs)
        assert a.shape == (m,) and np.ptp(a) > 1e-3  # the teachers do get different actions
        np.testing.assert_allclose(policy.act(_permute_teacher_obs(obs, m, perm)), a[perm], rtol=0, atol=1e-5)


def test_sample_policy_permutes_per_row_and_takes_any_batch_size():
    layout = {"granularity": "sample", "per_teacher": 3, "logits": True, "student": True}
    m, c, s = 4, 5, 6
    policy = _policy(layout, (32, m * (3 + c) + s), (32, m), sharpen=True, num_classes=c, student_dim=s)
    rng = np.random.default_rng(1)
    for batch in (32, 7, 1):
        teachers = rng.uniform(0, 3, size=(batch, m, 3 + c)).astype(np.float32)
        student = rng.normal(size=(batch, s)).astype(np.float32)
        obs = np.concatenate([teachers.reshape(batch, -1), student], axis=1)
        a = policy.act(obs)
        assert a.shape == (batch, m)
        perm = rng.permutation(m)
        permuted = np.concatenate([teachers[:, perm].reshape(batch, -1), student], axis=1)
        np.testing.assert_allclose(policy.act(permuted), a[:, perm], rtol=0, atol=1e-5)
        # rows are independent sub-decisions: one row's action does not depend on the others
        np.testing.assert_allclose(policy.act(obs[:1]), a[:1], rtol=0, atol=1e-5)


def test_gsde_noise_is_shared_by_tokens_and_follows_a_permutation():
    policy = _policy(TEACHER_LAYOUT, (3 * 3 + 2,), (3,), sharpen=True)
    policy.reset_noise(1)
    rng = np.random.default_rng(2)
    obs, perm = _teacher_obs(rng, 3), np.array([2, 0, 1])
    with torch.no_grad():
        stochastic = [policy._predict(torch.as_tensor(o)[None], deterministic=False)[0].numpy()
                      for o in (obs, _permute_teacher_obs(obs, 3, perm))]
    assert not np.allclose(stochastic[0], policy.act(obs), atol=1e-4)  # the noise is there ...
    np.testing.assert_allclose(stochastic[1], stochastic[0][perm], rtol=0, atol=1e-5)  # ... and equivariant


@pytest.mark.parametrize("use_sde", [True, False])
def test_log_prob_sums_teachers_and_averages_rows(use_sde):
    layout = {"granularity": "sample", "per_teacher": 3, "logits": False, "student": False}
    policy = _policy(layout, (5, 6), (5, 2), use_sde=use_sde, sharpen=True)
    rng = np.random.default_rng(3)
    obs = torch.as_tensor(rng.uniform(0, 2, size=(4, 5, 6)).astype(np.float32))
    actions = torch.as_tensor(rng.uniform(-1, 1, size=(4, 10)).astype(np.float32))
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(obs, actions)
        dist = policy.get_distribution(obs).distribution
    mean, std = dist.mean.double(), dist.stddev.double()
    per_dim = torch.distributions.Normal(mean, std).log_prob(actions.double())
    want = per_dim.reshape(4, 5, 2).sum(-1).mean(-1)
    np.testing.assert_allclose(log_prob.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_settings_give_one_line_errors():
    with pytest.raises(ConfigError, match="unknown policy 'TeacherSet'.*did you mean 'TeacherSetPolicy'"):
        resolve_policy("TeacherSet", "ppo")
    with pytest.raises(ConfigError, match="actor-critic policy for ppo or a2c, got --algo sac"):
        resolve_policy("TeacherSetPolicy", "sac")
    with pytest.raises(ConfigError, match="expected sample_obs_embeddings=false"):
        layout_for(EnvConfig(granularity="sample", sample_obs_embeddings=True))
    with pytest.raises(ConfigError, match="net_arch does not apply"):
        _policy(TEACHER_LAYOUT, (11,), (3,), net_arch=[8])
    with pytest.raises(ConfigError, match="expected one weight per teacher"):
        layout_for(EnvConfig(separate_feature_weights=True))
    assert layout_for(EnvConfig(obs_features=["ce", "progress", "acc"]))["columns"] == "TGT"


def test_ppo_set_trains_and_its_policy_acts_on_another_pool(scenario_config, tmp_path):
    """Trained on pools of 3 (train instances), the saved policy runs on a test instance and on a
    pool of 4 teachers of the bank (the `redundant` scenario's pool)."""
    cfg = scenario_config("pools")
    run = api.train("ppo-set", env_config=cfg, total_timesteps=16, out_dir=str(tmp_path), hyperparams=TINY_PPO,
                    show_progress=False)
    policy = api.load_policy(run)
    assert policy.trained_shapes() == ((None,), (None,))
    for other in (cfg.replace(instance_set="test", instance=1), scenario_config("redundant")):
        env = MultiTeacherKDEnv(policy.make_env_config(other))
        policy.check_env(env)
        obs, _ = env.reset(seed=5)
        for _ in range(2):
            action, _ = policy.predict(obs)
            assert action.shape == env.action_space.shape
            obs, *_ = env.step(action)


CLASSIFICATION_SCENARIOS = sorted(n for n, s in SCENARIOS.items()
                                  if s.settings.get("task", "classification") == "classification")


@pytest.mark.parametrize("scenario", CLASSIFICATION_SCENARIOS)
def test_a_learner_trains_end_to_end_on_every_scenario(scenario, scenario_config, tmp_path):
    algo = "ppo-sample" if scenario == "specialists" else "ppo-set"
    run = api.train(algo, env_config=scenario_config(scenario), total_timesteps=8, out_dir=str(tmp_path),
                    hyperparams=TINY_PPO, show_progress=False)
    policy = api.load_policy(run)
    env = MultiTeacherKDEnv(policy.make_env_config(scenario_config(scenario)))
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs)
    assert action.shape == env.action_space.shape
    if algo == "ppo-sample":
        assert env.config.granularity == "sample" and action.shape == (env.config.batch_size, env.num_teachers)


def test_ppo_credit_trains_on_the_per_step_credit_and_acts_per_sample(scenario_config, tmp_path):
    run = api.train("ppo-credit", env_config=scenario_config("specialists"), total_timesteps=8, out_dir=str(tmp_path),
                    hyperparams={**TINY_PPO, "batch_size": 4}, show_progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["env"]["reward"] == "kd_label_credit" and saved["env"]["log_rewards"] == ["twin_val_loss"]
    assert saved["hyperparams"]["gamma"] == 0.0 and saved["hyperparams"]["use_sde"] is False
    policy = api.load_policy(run)
    env = MultiTeacherKDEnv(policy.make_env_config(scenario_config("specialists")))
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs)
    assert action.shape == (env.config.batch_size, env.num_teachers)
    assert np.allclose(env.action_to_weights(action)[0], 0.25, atol=0.01)  # untrained ≈ uniform


def test_the_mlp_ppo_on_schedule_acts_on_the_progress_alone(scenario_config, tmp_path):
    """ppo.yml's `schedule` section: the state is the progress (standardised), the reward the final
    twin advantage, paid at the end only; the trained policy acts on the progress alone."""
    cfg = scenario_config("schedule")
    run = api.prepare_run("ppo", env_config=cfg, total_timesteps=8, out_dir=str(tmp_path),
                          hyperparams={"n_epochs": 1}, show_progress=False)
    assert run.env_config.reward == "twin_final_val_acc" and list(run.env_config.obs_features) == ["progress"]
    assert run.agent.model.n_steps == cfg.max_steps  # one rollout = one episode
    policy = api.load_policy(run.train())
    assert policy.meta["obs_norm"] is not None
    env = MultiTeacherKDEnv(policy.make_env_config(cfg))
    assert env.observation_space.shape == (1,)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(policy.predict(obs)[0])
        done = terminated or truncated
