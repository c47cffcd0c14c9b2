"""Evaluation episodes: a trained `Policy` or equal weights (AVER) on fresh students.

A policy runs as the contract says: `env.step(policy.predict(obs, deterministic=True)[0])` on
`MultiTeacherKDEnv(user_config.replace(**policy.env_overrides))`; AVER runs through
`env.step_weights(1/M)` on the user's config. Both go through the same env, and episodes with
the same seed start from the same student, data order and augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from mtkd_env import EnvConfig

from .policy import Policy

__all__ = ["EpisodeResult", "EVAL_SEED_BASE", "eval_seeds", "run_episode", "evaluate_policy", "evaluate_equal",
           "mean_std"]

EVAL_SEED_BASE = 100_000
"""Evaluation episodes use seeds EVAL_SEED_BASE + 1000 * run seed + i, away from training resets."""


def eval_seeds(seed: int, n: int) -> List[int]:
    return [EVAL_SEED_BASE + 1000 * int(seed) + i for i in range(n)]


@dataclass
class EpisodeResult:
    """The outcome of one episode; weights are the mean over steps (and samples), (M,)."""

    seed: int
    final_test_acc: float
    final_val_acc: float
    episode_return: float
    steps: int
    mean_weight_logit: List[float] = field(default_factory=list)
    mean_weight_feat: List[float] = field(default_factory=list)


def run_episode(env, seed: int, act: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                weights: Optional[np.ndarray] = None) -> EpisodeResult:
    """One episode with `act(obs) -> action` (through `env.step`) or fixed `weights` (`step_weights`)."""
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    sum_l = np.zeros(env.num_teachers)
    sum_f = np.zeros(env.num_teachers)
    while True:
        if act is not None:
            obs, reward, terminated, truncated, info = env.step(act(obs))
        else:
            obs, reward, terminated, truncated, info = env.step_weights(weights)
        total += reward
        steps += 1
        sum_l += np.asarray(info["weights_logit"]).reshape(-1, env.num_teachers).mean(0)
        sum_f += np.asarray(info["weights_feat"]).reshape(-1, env.num_teachers).mean(0)
        if terminated or truncated:
            break
    return EpisodeResult(seed, float(info.get("final_test_acc", np.nan)), float(info.get("final_val_acc", np.nan)),
                         total, steps, (sum_l / steps).tolist(), (sum_f / steps).tolist())


def evaluate_policy(policy: Policy, env_config: EnvConfig, seeds: Sequence[int], env=None) -> List[EpisodeResult]:
    """Deterministic episodes of `policy` on `env_config` plus the policy's env overrides."""
    from mtkd_env.env import MultiTeacherKDEnv

    env = env or MultiTeacherKDEnv(policy.make_env_config(env_config))
    return [run_episode(env, s, act=lambda o: policy.predict(o, deterministic=True)[0]) for s in seeds]


def evaluate_equal(env_config: EnvConfig, seeds: Sequence[int], env=None) -> List[EpisodeResult]:
    """AVER: every teacher weighted 1/M for logits and features."""
    from mtkd_env.env import MultiTeacherKDEnv

    env = env or MultiTeacherKDEnv(env_config)
    equal = np.full(env.num_teachers, 1.0 / env.num_teachers, dtype=np.float32)
    return [run_episode(env, s, weights=equal) for s in seeds]


def mean_std(values: Sequence[float]) -> tuple:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
