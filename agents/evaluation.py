"""Evaluation episodes of a trained `Policy` and of equal weights (AVER) on fresh students.

Both run through `mtkd_env.episodes` (the one episode runner): the policy through
`env.step(policy.predict(obs, deterministic=True)[0])` on
`MultiTeacherKDEnv(user_config.replace(**policy.env_overrides))`, AVER through `env.step_weights(1/M)`
on the user's config; episodes with the same seed start from the same student, data order and
augmentation.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from mtkd_env import EnvConfig
from mtkd_env.episodes import EpisodeResult, EqualWeights, run_episodes

from .policy import Policy

__all__ = ["EVAL_SEED_BASE", "eval_seeds", "evaluate_policy", "evaluate_equal", "mean_std"]

EVAL_SEED_BASE = 100_000
"""Evaluation episodes use seeds EVAL_SEED_BASE + 1000 * run seed + i, away from training resets."""


def eval_seeds(seed: int, n: int) -> List[int]:
    return [EVAL_SEED_BASE + 1000 * int(seed) + i for i in range(n)]


def evaluate_policy(policy: Policy, env_config: EnvConfig, seeds: Sequence[int], env=None) -> List[EpisodeResult]:
    """Deterministic episodes of `policy` on `env_config` plus the policy's env overrides."""
    return run_episodes(policy, env_config, seeds, env)


def evaluate_equal(env_config: EnvConfig, seeds: Sequence[int], env=None) -> List[EpisodeResult]:
    """AVER: every teacher weighted 1/M for logits and features."""
    return run_episodes(EqualWeights(), env_config, seeds, env)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
