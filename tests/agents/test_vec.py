"""SB3 agents on several envs: `--n-envs K --vec-env {batched,subproc,dummy}`, logging, resume."""

from __future__ import annotations

import json
import signal
import sys

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

import agents.train as train_cli
from agents import api
from agents.run import Run, TrainingInterrupted
from agents.vec_env import SB3BatchedVecEnv
from mtkd_env.vector_env import MultiTeacherKDVectorEnv

from .test_cli import _env_args
from tests.runs import SendSignal, diff_states, metric_rows

PPO = {"n_steps": 8, "batch_size": 8, "n_epochs": 2}


def _rows(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith("time/")}
            for r in (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_sb3_adapter_resets_ended_sub_envs_in_the_same_step(synthetic_config):
    venv = SB3BatchedVecEnv(MultiTeacherKDVectorEnv(2, synthetic_config(max_steps=3), autoreset_mode="Disabled"))
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (2, *venv.observation_space.shape) and [i["episode_seed"] for i in venv.reset_infos]
    for t in range(3):
        obs, rewards, dones, infos = venv.step(np.zeros((2, 3), np.float32))
        assert rewards.dtype == np.float32 and all(i["TimeLimit.truncated"] is False for i in infos)
    assert dones.all() and all("terminal_observation" in i and "final_test_acc" in i for i in infos)
    assert not np.allclose(obs, np.stack([i["terminal_observation"] for i in infos]))  # obs = the reset ones
    assert venv.get_attr("teacher_names")[0] == venv.vector.teacher_names
    assert venv.env_method("host_state", indices=[1])[0]["t"] == 0
    assert isinstance(VecMonitor(venv), VecMonitor)


def test_ppo_with_two_envs_trains_the_same_in_every_layout(synthetic_config, tmp_path):
    """Sub-env k starts from seed s + k in each layout, so the runs agree (float tolerance); the
    episodes of both envs are logged, one row each."""
    cfg = synthetic_config()
    runs = {}
    for kind in ("batched", "dummy", "subproc"):
        run_dir = api.train("ppo", env_config=cfg, total_timesteps=32, out_dir=str(tmp_path / kind),
                            hyperparams={**PPO, "n_envs": 2, "vec_env": kind}, show_progress=False, save_freq=0)
        runs[kind] = _rows(run_dir)
    episodes = [r for r in runs["batched"] if "episode/index" in r]
    assert [(r["global_step"], r["episode/env"]) for r in episodes] == [(16, 0), (16, 1), (32, 0), (32, 1)]
    assert all(r["episode/length"] == 8 for r in episodes)
    assert sum("step/loss" in r for r in runs["batched"]) == 16  # one per vector step
    for kind in ("dummy", "subproc"):
        assert len(runs[kind]) == len(runs["batched"])
        for a, b in zip(runs["batched"], runs[kind]):
            assert set(a) == set(b)
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (kind, key)


@pytest.mark.parametrize("algo, kind, hp", [
    ("ppo", "batched", {**PPO, "use_sde": True, "sde_sample_freq": -1, "normalize": {"norm_obs": False,
                                                                                 "norm_reward": True}}),
    ("sac", "batched", {"learning_starts": 8, "batch_size": 8}),
    ("a2c", "subproc", {"n_steps": 4}),
    ("td3", "dummy", {"learning_starts": 8, "batch_size": 8, "noise_type": "ornstein-uhlenbeck"}),
])
def test_interrupted_and_resumed_run_with_two_envs_is_bit_identical(algo, kind, hp, synthetic_config, tmp_path):
    cfg = synthetic_config(max_steps=6, reward="twin_val_loss", reward_interval=2)
    kwargs = dict(env_config=cfg, total_timesteps=44, hyperparams={**hp, "n_envs": 2, "vec_env": kind},
                  show_progress=False, save_freq=0)
    straight = api.train(algo, out_dir=str(tmp_path / "a"), **kwargs)
    with pytest.raises(TrainingInterrupted) as caught:
        api.train(algo, out_dir=str(tmp_path / "b"), callbacks=[SendSignal(18, signal.SIGTERM)], **kwargs)
    stopped = caught.value
    assert 18 <= stopped.num_timesteps < 44
    run = Run.resume(stopped.run_dir)
    state = torch.load(stopped.run_dir / "checkpoint/state.pt", weights_only=True)
    saved = state["agent"]["vec_envs"]  # every sub-env's episode is in the checkpoint
    assert (saved["vector"]["num_envs"] if kind == "batched" else len(saved["envs"])) == 2
    resumed = run.train()
    final_a = torch.load(straight / "checkpoint/state.pt", weights_only=True)
    final_b = torch.load(resumed / "checkpoint/state.pt", weights_only=True)
    assert final_a["num_timesteps"] == final_b["num_timesteps"] >= 44
    assert diff_states(final_a, final_b) == []
    assert metric_rows(straight) == metric_rows(resumed)


def test_cli_n_envs_and_hyperparameter_file(tmp_path, capsys, teacher_cache):
    (tmp_path / "hp.yml").write_text("MultiTeacherKD-v0:\n  n_envs: 2\n  n_steps: 4\n  batch_size: 8\n  n_epochs: 1\n")
    assert train_cli.main(["--algo", "ppo", "--hyperparams", str(tmp_path / "hp.yml"), "--total-timesteps", "16",
                       "--out", str(tmp_path / "a"), "--wandb", "disabled", "--eval-episodes", "0", "--no-progress",
                       *_env_args(teacher_cache)]) == 0
    run_dir = next((tmp_path / "a").iterdir())
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["hyperparams"]["n_envs"] == 2
    assert sum("episode/index" in r for r in _rows(run_dir)) == 2
    capsys.readouterr()
    assert train_cli.main(["--algo", "a2c", "--n-envs", "2", "--vec-env", "dummy", "--total-timesteps", "8",
                       "--out", str(tmp_path / "b"), "--wandb", "disabled", "--eval-episodes", "0", "--no-progress",
                       *_env_args(teacher_cache)]) == 0
    config = yaml.safe_load((next((tmp_path / "b").iterdir()) / "config.yaml").read_text())
    assert (config["hyperparams"]["n_envs"], config["hyperparams"]["vec_env"]) == (2, "dummy")


@pytest.mark.parametrize("args, message", [
    (["--algo", "ppo", "--n-envs", "0"], "n_envs: expected an integer >= 1"),
    (["--algo", "mtkd-rl", "--n-envs", "2"], "n_envs: mtkd-rl trains one student at a time"),
    (["--algo", "ppo", "--vec-env", "threads"], "argument --vec-env: invalid choice"),
    (["--algo", "sac", "--n-envs", "2", "--hyperparams", "HP"], "train_freq: sac with n_envs 2 collects steps"),
    (["--resume", "EMPTY", "--n-envs", "2"], "--n-envs cannot change it"),
])
def test_bad_n_envs_input_exits_2_with_one_line(args, message, tmp_path, capsys, teacher_cache):
    (tmp_path / "hp.yml").write_text("train_freq: [1, episode]\n")
    (tmp_path / "empty").mkdir()
    subs = {"HP": str(tmp_path / "hp.yml"), "EMPTY": str(tmp_path / "empty")}
    argv = [subs.get(a, a) for a in args] + (["--out", str(tmp_path / "out"), "--wandb", "disabled",
                                               *_env_args(teacher_cache)] if "--resume" not in args else [])
    with pytest.raises(SystemExit) as exc:
        sys.exit(train_cli.main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
