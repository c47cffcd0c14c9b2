"""The shipped PPO formulation: twin reward through env_kwargs, no prior in the action path."""

from __future__ import annotations

import numpy as np
import pytest

from agents import api
from agents.hyperparams import apply_env_kwargs, default_hyperparams
from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError


def test_untrained_ppo_policy_gives_near_uniform_weights(synthetic_config, tmp_path):
    run = api.prepare_run("ppo", env_config=synthetic_config(), out_dir=str(tmp_path), show_progress=False)
    env, model = run.agent.env, run.agent.model
    obs, _ = env.reset(seed=0)
    m = env.num_teachers
    for _ in range(6):
        action, _ = model.predict(obs, deterministic=True)
        w_logit, w_feat = env.action_to_weights(action)
        assert np.abs(w_logit - 1.0 / m).max() < 0.05 and np.abs(w_feat - 1.0 / m).max() < 0.05
        obs, *_ = env.step(action)


def test_shipped_ppo_env_kwargs_apply_unless_the_user_sets_the_field(synthetic_config, tmp_path):
    hp = default_hyperparams("ppo")
    assert hp["env_kwargs"]["reward"] == "twin_val_loss" and hp["gamma"] == 1.0 and hp["use_sde"]
    run = api.prepare_run("ppo", env_config=synthetic_config(), out_dir=str(tmp_path / "a"), show_progress=False)
    assert run.agent.env.config.reward == "twin_val_loss" and run.agent.env.engine.has_twin
    mine = synthetic_config(reward="probe_loss_drop").to_dict()
    run = api.prepare_run("ppo", env_config=mine, out_dir=str(tmp_path / "b"), show_progress=False)
    assert run.agent.env.config.reward == "probe_loss_drop" and not run.agent.env.engine.has_twin


def test_env_kwargs_precedence_and_errors():
    cfg = EnvConfig(epochs=2.0)
    assert apply_env_kwargs(cfg, {"reward": "final_val_acc", "epochs": 5.0}).epochs == 2.0  # user's non-default wins
    assert apply_env_kwargs(cfg, {"reward": "final_val_acc"}).reward == "final_val_acc"
    assert apply_env_kwargs(cfg, {"epochs": 5.0}, explicit=set()).epochs == 5.0
    with pytest.raises(ConfigError, match="unknown EnvConfig field"):
        apply_env_kwargs(cfg, {"rewrd": "x"})


@pytest.mark.slow
@pytest.mark.parametrize("teachers", [["cnn", "cnn=random"], ["cnn=random", "cnn"]])
def test_shipped_ppo_learns_to_drop_an_unreliable_teacher_wherever_it_sits(teachers, tiny_config, tmp_path):
    """The shipped formulation (only the rollout sized to this short episode) learns from uniform
    weights to drop an untrained teacher, at either index of the pool."""
    from agents.tracking import read_metrics
    from mtkd_env.env import MultiTeacherKDEnv

    steps, episodes = 36, 40
    bad = teachers.index("cnn=random")
    cfg = tiny_config(teachers=teachers, max_steps=steps)
    run_dir = api.train("ppo", env_config=cfg, total_timesteps=steps * episodes, out_dir=str(tmp_path),
                        hyperparams={"n_steps": steps, "batch_size": steps}, show_progress=False)
    curve = [r[f"episode/weight_logit/{bad}_cnn=random"] for r in read_metrics(run_dir / "metrics.jsonl")
             if "episode/index" in r]
    assert len(curve) == episodes and np.mean(curve[:10]) > 0.3 and np.mean(curve[-10:]) < np.mean(curve[:10]) - 0.1
    policy = api.load_policy(run_dir)
    env = MultiTeacherKDEnv(policy.make_env_config(cfg))
    obs, _ = env.reset(seed=5)
    weights = []
    while True:
        obs, _, terminated, _, info = env.step(policy.predict(obs)[0])
        weights.append(info["weights_logit"][bad])
        if terminated:
            break
    assert np.mean(weights) < 0.25
