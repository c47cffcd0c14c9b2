"""`Policy`: a trained agent as a plain function from raw env observations to env actions.

This is the contract with `baselines.compare` and `agents.evaluate`: build the env as
`MultiTeacherKDEnv(user_config.replace(**policy.env_overrides))` and call
`env.step(policy.predict(obs, deterministic=True)[0])`. Observation normalisation learned during
training (VecNormalize) is applied inside `predict`, so callers pass raw observations.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from mtkd_env import EnvConfig

__all__ = ["Policy", "INTERFACE_FIELDS", "interface_overrides"]

INTERFACE_FIELDS: Tuple[str, ...] = ("granularity", "separate_feature_weights", "action_transform",
                                     "action_temperature", "sample_obs_embeddings", "sample_obs_logits",
                                     "sample_obs_student")
"""EnvConfig fields that define the observation and action spaces a policy was trained on."""


def interface_overrides(config: EnvConfig) -> dict:
    """The interface fields of `config` that differ from the EnvConfig defaults ({} for the default env)."""
    default = EnvConfig.__dataclass_fields__
    out = {}
    for name in INTERFACE_FIELDS:
        value = getattr(config, name)
        if value != default[name].default:
            out[name] = value
    return out


class Policy:
    """A loaded agent. `algo` names the algorithm, `env_overrides` the EnvConfig fields its env
    needs on top of the user's config, `meta` everything saved with it (training env config,
    hyperparameters, teacher names)."""

    def __init__(self, algo: str, env_overrides: dict, meta: dict) -> None:
        self.algo = algo
        self.env_overrides = dict(env_overrides)
        self.meta = meta

    @property
    def env_config(self) -> EnvConfig:
        """The env config the agent was trained on (a callable reward is replaced by the default)."""
        from mtkd_env.rewards import REWARDS

        data = dict(self.meta["env_config"])
        if data.get("reward") is not None and data["reward"] not in REWARDS:  # a callable's saved name
            data["reward"] = None
        return EnvConfig.from_dict(data)

    def make_env_config(self, user_config: EnvConfig) -> EnvConfig:
        return user_config.replace(**self.env_overrides)

    def predict(self, obs: np.ndarray, state: Optional[Any] = None, episode_start: Optional[np.ndarray] = None,
                deterministic: bool = True):
        """Action in the env's action space for a raw observation; returns `(action, state)`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(algo={self.algo!r}, env_overrides={self.env_overrides!r})"
