"""Algorithm registry: name -> how to validate its hyperparameters, build it and load its policy.

Every entry builds an *agent* (`Agent`): the algorithm plus its `MultiTeacherKDEnv`, exposing the
same small interface to the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Optional, Protocol, Union

import numpy as np
import torch
from pydantic import Field

from mtkd_env import EnvConfig
from mtkd_env.runtime.errors import ConfigError, did_you_mean

from .hyperparams import validate_dataclass, validate_sb3
from .modelfile import MODEL_NAME, read_meta
from .mtkd_rl import ENV_OVERRIDES as MTKD_ENV_OVERRIDES
from .mtkd_rl import MTKDRL, MTKDRLConfig
from .online import OnlineAgent
from .policy import Policy
from .rmts import ENV_OVERRIDES as RMTS_ENV_OVERRIDES
from .rmts import RMTS, RMTSConfig
from .sb3_agent import SB3_CLASSES, SB3Agent, load_sb3_policy

__all__ = ["Agent", "AlgoSpec", "REGISTRY", "get_spec", "load_policy", "OwnAgent", "OwnPolicy"]

ModelFactory = Callable[[Any, dict, int, str], OnlineAgent]
"""(env, hyperparameters without the run's keys, seed, device) -> the agent's model."""

_RUN_KEY_TYPES: Dict[str, Any] = {"n_timesteps": Annotated[int, Field(ge=1)], "env_kwargs": Dict[str, Any],
                                 "n_envs": Annotated[int, Field(ge=1)], "vec_env": Optional[str]}
_RUN_KEYS = tuple(_RUN_KEY_TYPES)
"""Hyperparameter keys read by the run, not by the agent's config."""


class Agent(Protocol):
    """What a training run drives (`SB3Agent`, `OwnAgent`). Checkpoints are taken only at safe
    points (`callback.on_rollout_start()`), where `training_state()` is complete."""

    env: Any
    """The agent's `MultiTeacherKDEnv` (for several SB3 envs: the first sub-env, or its facts)."""
    model: Any
    """The SB3 model or an `OnlineAgent`: `set_logger`, `predict` and SB3's callback interface."""

    @property
    def num_timesteps(self) -> int: ...

    def learn(self, total_timesteps: int, callback: Any, reset_num_timesteps: bool) -> None: ...

    def raw_rewards(self, locals_: dict) -> np.ndarray:
        """Every sub-env's reward of the last step, (n_envs,) (before any reward normalisation)."""

    def training_state(self) -> dict:
        """Everything a bit-identical continuation needs (weights-only-loadable)."""

    def load_training_state(self, state: dict) -> None: ...

    def save_model(self, path: Path, meta: dict) -> None:
        """Write model.zip with `meta` as its `mtkd_meta.json`."""


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    env_overrides: Dict[str, Any]
    """EnvConfig fields the algorithm needs on top of the user's config."""
    validate: Callable[[dict], dict]
    build: Callable[[EnvConfig, dict, int, str], Agent]
    load_policy: Callable[[Path, dict], Policy]


class OwnAgent:
    """One of the project's own agents (`OnlineAgent`: MTKD-RL, RMTS) plus its env, with the
    run-facing interface of `SB3Agent`."""

    def __init__(self, algo: str, env_config: EnvConfig, hyperparams: dict, seed: int, device: str,
                 make_model: ModelFactory, env_overrides: Dict[str, Any]) -> None:
        from mtkd_env.env import MultiTeacherKDEnv

        self.algo = algo
        self.hyperparams = dict(hyperparams)
        self.env_overrides = dict(env_overrides)
        self.env = MultiTeacherKDEnv(env_config)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = make_model(self.env, {k: v for k, v in hyperparams.items() if k not in _RUN_KEYS}, seed, device)

    @property
    def num_timesteps(self) -> int:
        return self.model.num_timesteps

    def learn(self, total_timesteps: int, callback: Any, reset_num_timesteps: bool) -> None:
        self.model.learn(total_timesteps, callback=callback, reset_num_timesteps=reset_num_timesteps)

    def raw_rewards(self, locals_: dict) -> np.ndarray:
        return np.asarray(locals_["rewards"], dtype=np.float64).reshape(-1)

    def training_state(self) -> dict:
        return {"agent": self.model.training_state(), "env": self.env.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.model.load_training_state(state["agent"])
        self.env.load_state_dict(state["env"])

    def save_model(self, path: Path, meta: dict) -> None:
        self.model.save(path, {**meta, "env_overrides": dict(self.env_overrides)})


class OwnPolicy(Policy):
    """A saved own agent: (B, F) per-sample state -> its env action."""

    def __init__(self, model: OnlineAgent, meta: dict) -> None:
        super().__init__(meta["algo"], meta["env_overrides"], meta)
        self.model = model

    def predict(self, obs, state=None, episode_start=None, deterministic: bool = True):
        return self.model.predict(obs, state, episode_start, deterministic)

    def trained_shapes(self):
        layout = self.model.layout  # any batch size B: (B, F) states, (B, M) or (B, 2M) actions
        m = layout.num_teachers
        return (None, layout.width), (None, 2 * m if self.env_overrides.get("separate_feature_weights") else m)


def _validator(name: str, config_class: type) -> Callable[[dict], dict]:
    def validate(hp: dict) -> dict:
        out = validate_dataclass(name, config_class, hp, extra=_RUN_KEY_TYPES)
        if out.get("n_envs", 1) != 1:
            raise ConfigError(f"n_envs: {name} trains one student at a time (n_envs 1); several envs are for the SB3 "
                              f"algorithms ({', '.join(SB3_CLASSES())})")
        if "vec_env" in out:  # --vec-env: how several sub-envs run, which this agent never has
            raise ConfigError(f"vec_env: {name} trains one student at a time and runs no vector env; --vec-env is "
                              f"for the SB3 algorithms ({', '.join(SB3_CLASSES())})")
        config_class(**{k: v for k, v in out.items() if k not in _RUN_KEYS})  # its cross-field checks
        return out

    return validate


def _sb3_spec(name: str, env_overrides: Optional[Dict[str, Any]] = None) -> AlgoSpec:
    return AlgoSpec(name=name, env_overrides=dict(env_overrides or {}),
                    validate=lambda hp: validate_sb3(name, SB3_CLASSES()[name], hp),
                    build=lambda cfg, hp, seed, device: SB3Agent(name, cfg, hp, seed, device),
                    load_policy=lambda path, meta: load_sb3_policy(path, meta))


def _mtkd_spec(name: str, variant: str) -> AlgoSpec:
    def make(env, hp, seed, device):
        return MTKDRL(env, variant, MTKDRLConfig(**hp), seed=seed, device=device)

    return AlgoSpec(name=name, env_overrides=dict(MTKD_ENV_OVERRIDES), validate=_validator(name, MTKDRLConfig),
                    build=lambda cfg, hp, seed, device: OwnAgent(name, cfg, hp, seed, device, make, MTKD_ENV_OVERRIDES),
                    load_policy=lambda path, meta: OwnPolicy(MTKDRL.load(path), meta))


def _rmts_spec() -> AlgoSpec:
    def make(env, hp, seed, device):
        return RMTS(env, RMTSConfig(**hp), seed=seed, device=device)

    # Its reward (`env_kwargs` in rmts.yml) is the probe-loss drop: the sample-granularity default,
    # "paper", would reward selecting no teacher (the training loss is then lower).
    return AlgoSpec(name="rmts", env_overrides=dict(RMTS_ENV_OVERRIDES), validate=_validator("rmts", RMTSConfig),
                    build=lambda cfg, hp, seed, device: OwnAgent("rmts", cfg, hp, seed, device, make,
                                                                 RMTS_ENV_OVERRIDES),
                    load_policy=lambda path, meta: OwnPolicy(RMTS.load(path), meta))


REGISTRY: Dict[str, AlgoSpec] = {
    "ppo": _sb3_spec("ppo"),
    "a2c": _sb3_spec("a2c"),
    "sac": _sb3_spec("sac"),
    "td3": _sb3_spec("td3"),
    # stock PPO with TeacherSetPolicy (agents/set_policy.py): per teacher, order- and pool-size-free;
    # per sample (one weight vector per image, the batch as a set of rows)
    "ppo-set": _sb3_spec("ppo-set"),
    "ppo-sample": _sb3_spec("ppo-sample", {"granularity": "sample", "sample_obs_embeddings": False}),
    # the same per-sample policy rewarded every step by the label credit of its weights (reward kd_label_credit)
    "ppo-credit": _sb3_spec("ppo-credit", {"granularity": "sample", "sample_obs_embeddings": False}),
    "mtkd-rl": _mtkd_spec("mtkd-rl", "code"),
    "mtkd-rl-pg": _mtkd_spec("mtkd-rl-pg", "pg"),
    "rmts": _rmts_spec(),
}


def get_spec(algo: str) -> AlgoSpec:
    if algo not in REGISTRY:
        raise ConfigError(f"unknown algo {algo!r}{did_you_mean([algo], REGISTRY)}; expected one of {list(REGISTRY)}")
    return REGISTRY[algo]


def load_policy(path: Union[str, Path]) -> Policy:
    """A trained policy from a run directory (its model.zip) or a model zip file."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_NAME
    meta = read_meta(path)
    return get_spec(meta.get("algo", "?")).load_policy(path, meta)
