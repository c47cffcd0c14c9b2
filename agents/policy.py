"""`Policy`: a trained agent as a plain function from raw env observations to env actions.

This is the contract with `baselines.compare` and `agents.evaluate`: build the env as
`MultiTeacherKDEnv(user_config.replace(**policy.env_overrides))` and call
`env.step(policy.predict(obs, deterministic=True)[0])`. Observation normalisation learned during
training (VecNormalize) is applied inside `predict`, so callers pass raw observations.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from mtkd_env import EnvConfig
from mtkd_env.runtime.errors import ConfigError

__all__ = ["Policy", "INTERFACE_FIELDS", "interface_overrides"]

INTERFACE_FIELDS: Tuple[str, ...] = ("granularity", "separate_feature_weights", "action_transform",
                                     "action_temperature", "sample_obs_embeddings", "sample_obs_logits",
                                     "sample_obs_student", "obs_features")
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
        from mtkd_env.mdp.rewards import REWARDS

        data = dict(self.meta["env_config"])
        if data.get("reward") is not None and data["reward"] not in REWARDS:  # a callable's saved name
            data["reward"] = None
        return EnvConfig.from_dict(data)

    def make_env_config(self, user_config: EnvConfig) -> EnvConfig:
        return user_config.replace(**self.env_overrides)

    def predict(self, obs: np.ndarray, state: Optional[Any] = None, episode_start: Optional[np.ndarray] = None,
                deterministic: bool = True) -> Tuple[np.ndarray, Any]:
        """Action in the env's action space for a raw observation; returns `(action, state)`."""
        raise NotImplementedError

    def trained_shapes(self) -> Tuple[Sequence[Optional[int]], Sequence[Optional[int]]]:
        """(observation shape, action shape) the agent was trained on; None marks a free dimension."""
        raise NotImplementedError

    def check_env(self, env: Any) -> None:
        """A one-line `ConfigError` if `env`'s observation or action differs from the training env's
        (e.g. another teacher pool or dataset), instead of a shape error inside the network."""
        obs, act = self.trained_shapes()
        got_obs, got_act = tuple(env.observation_space.shape), tuple(env.action_space.shape)

        def fits(want: Sequence[Optional[int]], got: tuple) -> bool:
            return len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got))

        if fits(obs, got_obs) and fits(act, got_act):
            return
        shape = lambda s: "(" + ", ".join("B" if d is None else str(d) for d in s) + ("," if len(s) == 1 else "") + ")"  # noqa: E731
        raise ConfigError(f"the {self.algo} agent was trained on observations {shape(obs)} and actions {shape(act)} "
                          f"(teachers {self.meta.get('teacher_names')}); this env has {shape(got_obs)} and "
                          f"{shape(got_act)} (teachers {list(env.teacher_names)}); expected an env with the "
                          f"teacher pool, dataset and {', '.join(INTERFACE_FIELDS)} it was trained with")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(algo={self.algo!r}, env_overrides={self.env_overrides!r})"
