"""The MDP the env exposes, apart from the training it drives: what an action means
(`actions`), what the agent observes (`observations`: names, columns, bounds), what it is
rewarded for (`rewards`, `measurements`) and how a step runs its iterations (`stepping`).

The names a user writes are here: `REWARDS` and `register_reward` (reward names for
`EnvConfig.reward`), `StepResult` (what a callable reward receives), `OBS_FEATURES` (names for
`EnvConfig.obs_features`).
"""

from __future__ import annotations

from .observations import OBS_FEATURES
from .rewards import REWARDS, StepResult, register_reward

__all__ = ["OBS_FEATURES", "REWARDS", "StepResult", "register_reward"]
