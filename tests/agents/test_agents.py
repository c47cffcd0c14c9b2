"""Every algorithm trains on a tiny config and leaves a complete run directory; the saved policy
follows the agents <-> baselines.compare contract; hyperparameters are validated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.env import MultiTeacherKDEnv

from agents import api
from agents.hyperparams import default_hyperparams, resolve_hyperparams
from agents.run import Run
from agents.tracking import read_metrics

# Small rollouts/warm-ups so every algorithm updates several times within 160 steps (20 episodes).
TINY_HP = {"ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 2}, "a2c": {"n_steps": 8},
           "sac": {"learning_starts": 16, "batch_size": 16}, "td3": {"learning_starts": 16, "batch_size": 16},
           "mtkd-rl": {}, "mtkd-rl-pg": {}, "rmts": {}}


def test_algos_match_contract():
    assert api.ALGOS == ("ppo", "a2c", "sac", "td3", "ppo-set", "ppo-sample", "ppo-credit", "mtkd-rl", "mtkd-rl-pg", "rmts")
    for algo in api.ALGOS:
        assert default_hyperparams(algo)["n_timesteps"] >= 1


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3", "mtkd-rl", "mtkd-rl-pg", "rmts"])
def test_each_algo_trains_and_saves_a_run(algo, synthetic_config, tmp_path):
    cfg = synthetic_config()
    run_dir = api.train(algo, env_config=cfg, total_timesteps=160, out_dir=str(tmp_path), hyperparams=TINY_HP[algo],
                        show_progress=False)
    assert run_dir.parent == tmp_path and run_dir.name.startswith(f"MultiTeacherKD-v0__{algo}__0__")
    for name in ("config.yaml", "model.zip", "metrics.jsonl", "summary.json", "checkpoint/state.pt"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algo"] == algo and config["seed"] == 0 and config["total_timesteps"] == 160
    assert EnvConfig.from_dict(config["env"]).replace(**config["env_overrides"]) == EnvConfig.from_dict(config["env"])
    assert {"torch", "stable_baselines3", "gymnasium", "mtkd_env"} <= set(config["versions"])
    assert "commit" in config["git"]

    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "step/reward" in r]
    assert [r["global_step"] for r in steps] == list(range(1, 161))
    assert all(f"weight/logit/{i}_{n}" in steps[0] for i, n in enumerate(["mlp", "cnn=random", "mlp=noisy"]))
    episodes = [r for r in rows if "episode/final_test_acc" in r]
    assert len(episodes) == 20 and all(0.0 <= r["episode/final_test_acc"] <= 1.0 for r in episodes)
    assert any(k.startswith(("train/", "agent/")) for r in rows for k in r)  # the agent did update
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_timesteps"] == 160 and summary["episodes"] == 20 and summary["eval"] is None

    # Contract: env = user config + policy.env_overrides; predict gives an action of that env.
    policy = api.load_policy(run_dir)
    assert policy.algo == algo
    if algo.startswith("mtkd-rl"):
        assert policy.env_overrides == {"granularity": "sample", "separate_feature_weights": True,
                                        "action_transform": "linear"}
    elif algo == "rmts":
        assert policy.env_overrides["action_transform"] == "select" and policy.env_overrides["sample_obs_student"]
    elif algo == "ppo":  # the shipped PPO observes the teachers' own statistics (env_kwargs in ppo.yml)
        assert policy.env_overrides == {"obs_features": ["ce", "acc", "entropy", "progress", "lr"]}
    else:
        assert policy.env_overrides == {}
    env = MultiTeacherKDEnv(cfg.replace(**policy.env_overrides))
    obs, _ = env.reset(seed=7)
    while True:
        action, _ = policy.predict(obs, deterministic=True)
        assert env.action_space.contains(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert 0.0 <= info["final_test_acc"] <= 1.0
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    assert api.load_policy(run_dir / "model.zip").predict(obs)[0].shape == action.shape
    assert torch.equal(torch_rng, torch.get_rng_state()) and np.array_equal(np_rng, np.random.get_state()[1])


def test_policy_applies_saved_observation_normalisation(synthetic_config, tmp_path):
    """With VecNormalize, predict(raw obs) equals the SB3 model on the normalised obs."""
    hp = {**TINY_HP["ppo"], "normalize": {"norm_obs": True, "norm_reward": True}}  # the shipped PPO uses raw obs
    run_dir = api.train("ppo", env_config=synthetic_config(), total_timesteps=32, out_dir=str(tmp_path),
                        hyperparams=hp, show_progress=False)
    state = torch.load(run_dir / "checkpoint/state.pt", weights_only=True)
    rms = state["agent"]["vecnorm"]["obs_rms"]
    policy = api.load_policy(run_dir)
    raw = np.linspace(0.0, 1.0, policy.model.observation_space.shape[0]).astype(np.float32)
    expected = np.clip((raw - rms["mean"].numpy()) / np.sqrt(rms["var"].numpy() + 1e-8), -10, 10).astype(np.float32)
    np.testing.assert_allclose(policy.normalize(raw), expected, rtol=1e-6)
    np.testing.assert_array_equal(policy.predict(raw)[0], policy.model.predict(expected, deterministic=True)[0])
    assert not np.allclose(policy.normalize(raw), raw)


def test_summary_compares_policy_with_equal_weights(synthetic_config, tmp_path):
    run_dir = api.train("mtkd-rl", env_config=synthetic_config(), total_timesteps=16, out_dir=str(tmp_path),
                        eval_episodes=2, show_progress=False)
    ev = json.loads((run_dir / "summary.json").read_text())["eval"]
    assert ev["seeds"] == [100000, 100001]
    assert len(ev["policy_test_acc"]) == len(ev["equal_test_acc"]) == 2
    assert set(ev["mean_weight_logit"]) == {"mlp", "cnn=random", "mlp=noisy"}
    assert abs(sum(ev["mean_weight_logit"].values()) - 1.0) < 1e-5
    # AVER on the same seeds is the equal-weight episode of the env itself.
    env = MultiTeacherKDEnv(synthetic_config())
    env.reset(seed=100001)
    while True:
        *_, terminated, _, info = env.step_weights(np.full(3, 1 / 3, dtype=np.float32))
        if terminated:
            break
    assert ev["equal_test_acc"][1] == pytest.approx(info["final_test_acc"])


@pytest.mark.parametrize("algo, hp, match", [
    ("ppo", {"n_stepz": 5}, r"unknown ppo hyperparameter\(s\) \['n_stepz'\]"),
    ("ppo", {"n_steps": "many"}, "n_steps: expected an integer >= 1 or 'episode', got 'many'"),
    ("sac", {"train_freq": [1, "weeks"]}, "train_freq"),
    ("td3", {"noise_type": "pink"}, "noise_type"),
    ("ppo", {"policy_kwargs": {"activation_fn": "sigmoidish"}}, "activation_fn"),
    ("mtkd-rl", {"warmup_weight": "half"}, "warmup_weight"),
    ("mtkd-rl-pg", {"hidden": 3}, r"unknown mtkd-rl-pg hyperparameter\(s\) \['hidden'\]"),
    ("dqn", {}, "unknown algo 'dqn'"),
])
def test_bad_hyperparameters_are_rejected_before_anything_is_written(algo, hp, match, synthetic_config, tmp_path):
    with pytest.raises(ConfigError, match=match):
        api.train(algo, env_config=synthetic_config(), total_timesteps=8, out_dir=str(tmp_path / "out"),
                  hyperparams=hp, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_rl_zoo_style_file_and_schedules(synthetic_config, tmp_path):
    hp_file = tmp_path / "ppo.yml"
    hp_file.write_text("MultiTeacherKD-v0:\n  n_steps: 16\n  batch_size: 8\n  learning_rate: lin_1e-3\n"
                       "  policy_kwargs: {net_arch: [8], activation_fn: relu}\n")
    run = api.prepare_run("ppo", env_config=synthetic_config(), total_timesteps=16, out_dir=str(tmp_path / "runs"),
                          hyperparams_file=hp_file, show_progress=False)
    model = run.agent.model
    assert model.n_steps == 16 and model.learning_rate(1.0) == pytest.approx(1e-3)
    assert model.learning_rate(0.5) == pytest.approx(5e-4)
    assert isinstance(model.policy.mlp_extractor.policy_net[1], torch.nn.ReLU)
    assert run.config["hyperparams"]["learning_rate"] == "lin_1e-3"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algo", ["ppo", "mtkd-rl-pg"])
def test_cuda_env_and_agent_then_cpu_policy(algo, synthetic_config, tmp_path):
    cfg = synthetic_config(device="cuda")
    run_dir = api.train(algo, env_config=cfg, total_timesteps=32, out_dir=str(tmp_path), hyperparams=TINY_HP[algo],
                        device="cuda", show_progress=False, eval_episodes=1)
    run = Run.resume(run_dir, total_timesteps=40, show_progress=False)  # checkpoints hold CUDA RNG and tensors
    assert run.train() == run_dir
    policy = api.load_policy(run_dir)  # loads on the CPU
    env = MultiTeacherKDEnv(cfg.replace(device="cpu", **policy.env_overrides))
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(policy.predict(obs)[0])


def test_scenario_sections_of_hyperparameter_files(synthetic_config, tmp_path):
    # Shipped: ppo-set trains 50 students on `pools`, 30 elsewhere.
    same = lambda hp: hp  # noqa: E731  (no validation: only the merge is under test)
    assert resolve_hyperparams("ppo-set", same, scenario="pools")["n_timesteps"] == 15500
    assert resolve_hyperparams("ppo-set", same, scenario="unreliable")["n_timesteps"] == 9300
    assert "scenarios" not in resolve_hyperparams("ppo-set", same)
    # ... and the MLP ppo sees only the progress on `schedule`, rewarded at the end; elsewhere its own state.
    assert resolve_hyperparams("ppo", same, scenario="schedule")["env_kwargs"] == {
        "reward": "twin_final_val_acc", "obs_features": ["progress"]}
    assert resolve_hyperparams("ppo", same, scenario="unreliable")["env_kwargs"]["reward"] == "twin_val_loss"
    # A user file's section for the run's scenario goes over the file's own values, overrides over both.
    hp_file = tmp_path / "ppo.yml"
    hp_file.write_text("MultiTeacherKD-v0:\n  n_steps: 16\n  batch_size: 8\n"
                       "  scenarios:\n    unreliable: {n_steps: 8}\n    pools: {n_steps: 32}\n")
    run = api.prepare_run("ppo", env_config=synthetic_config(scenario="unreliable"), total_timesteps=16,
                          out_dir=str(tmp_path / "runs"), hyperparams_file=hp_file, show_progress=False)
    assert run.agent.model.n_steps == 8 and run.config["hyperparams"]["n_steps"] == 8
    assert "scenarios" not in run.config["hyperparams"]
    assert resolve_hyperparams("ppo", same, hp_file, {"n_steps": 4}, scenario="unreliable")["n_steps"] == 4
    assert resolve_hyperparams("ppo", same, hp_file)["n_steps"] == 16


@pytest.mark.parametrize("text, match", [
    ("scenarios:\n  pool: {n_steps: 8}\n", r"unknown scenario\(s\) \['pool'\].*did you mean 'pools'"),
    ("scenarios: [pools]\n", "expected a mapping of scenario names to mappings"),
    ("scenarios:\n  pools: {scenarios: {}}\n", "cannot hold another `scenarios`"),
])
def test_bad_scenario_sections_are_one_line_errors(text, match, tmp_path):
    hp_file = tmp_path / "ppo.yml"
    hp_file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_hyperparams("ppo", lambda hp: hp, hp_file, scenario="pools")
