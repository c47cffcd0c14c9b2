"""Run by tests/mtkd_env/test_distributed.py under torchrun: K env steps with fixed weights per granularity.

Every rank saves its observations; rank 0 also saves the student's parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mtkd_env.runtime.distributed import init_from_env, leave
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.config import EnvConfig


def config(granularity: str, cache: str) -> EnvConfig:
    return EnvConfig(dataset="synthetic", dataset_kwargs={"shape": [1, 8, 8], "num_classes": 4, "n_train": 128,
                                                          "n_val": 32, "n_test": 32},
                     teachers=["mlp=random", "cnn=random"], student="mlp", feature_kd=False, batch_size=16,
                     max_steps=6, reward="neg_loss", granularity=granularity, device="cpu", lr=0.1,
                     teacher_cache_dir=cache, show_progress=False)


def run(granularity: str, cache: str, steps: int = 5):
    env = MultiTeacherKDEnv(config(granularity, cache))
    obs, _ = env.reset(seed=0)
    trajectory, rewards = [obs], []
    w = np.array([0.7, 0.3], np.float32)
    for _ in range(steps):
        obs, r, _, _, _ = env.step_weights(w)
        trajectory.append(obs)
        rewards.append(r)
    return np.stack(trajectory), np.array(rewards), env.engine.student


def run_batchnorm(cache: str, steps: int = 3):
    """A BN student with feature KD and the probe reward: evaluation forwards between the step's
    forward and its backward must not disturb DDP's buffers."""
    cfg = config("teacher", cache).replace(student="tiny_cnn", feature_kd=True, reward="probe_loss_drop")
    env = MultiTeacherKDEnv(cfg)
    obs, _ = env.reset(seed=1)
    trajectory = [obs]
    for _ in range(steps):
        trajectory.append(env.step(np.zeros(2, np.float32))[0])
    return np.stack(trajectory)


def main(out: str, cache: str) -> None:
    torch.set_num_threads(1)
    ctx = init_from_env("cpu")
    np.save(Path(out) / f"bn_obs_rank{ctx.rank}.npy", run_batchnorm(cache))
    for granularity in ("teacher", "sample"):
        obs, rewards, student = run(granularity, cache)
        np.save(Path(out) / f"{granularity}_obs_rank{ctx.rank}.npy", obs)
        np.save(Path(out) / f"{granularity}_rewards_rank{ctx.rank}.npy", rewards)
        if ctx.is_main:
            torch.save({k: v.clone() for k, v in student.state_dict().items()}, Path(out) / f"{granularity}_student.pt")
    leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
