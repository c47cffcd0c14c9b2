"""Algorithm registry: name -> how to validate its hyperparameters, build it and load its policy.

Every entry builds an *agent*: the algorithm plus its `MultiTeacherKDEnv`, exposing the same small
interface to the run (`learn`, `num_timesteps`, `training_state`/`load_training_state`,
`save_model`, `raw_reward`, `env`, `model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

import torch

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError

from .hyperparams import validate_dataclass, validate_sb3
from .mtkd_rl import ENV_OVERRIDES, MTKDRL, MTKDRLConfig
from .policy import Policy
from .sb3_agent import SB3_CLASSES, SB3Agent, load_sb3_policy

__all__ = ["AlgoSpec", "REGISTRY", "get_spec", "MTKDAgent", "MTKDRLPolicy"]

_RUN_KEYS = ("n_timesteps", "env_kwargs")
"""Hyperparameter keys read by the run, not by the agent's config."""


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    env_overrides: Dict[str, Any]
    """EnvConfig fields the algorithm needs on top of the user's config."""
    validate: Callable[[dict], dict]
    build: Callable[[EnvConfig, dict, int, str], Any]
    load_policy: Callable[[Path, dict], Policy]


class MTKDAgent:
    """`MTKDRL` plus its env, with the run-facing interface of `SB3Agent`."""

    def __init__(self, algo: str, variant: str, env_config: EnvConfig, hyperparams: dict, seed: int,
                 device: str) -> None:
        from mtkd_env.env import MultiTeacherKDEnv

        self.algo = algo
        self.hyperparams = dict(hyperparams)
        config = MTKDRLConfig(**{k: v for k, v in hyperparams.items() if k not in _RUN_KEYS})
        self.env = MultiTeacherKDEnv(env_config)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = MTKDRL(self.env, variant, config, seed=seed, device=device)

    @property
    def num_timesteps(self) -> int:
        return self.model.num_timesteps

    def learn(self, total_timesteps: int, callback: Any, reset_num_timesteps: bool) -> None:
        self.model.learn(total_timesteps, callback=callback, reset_num_timesteps=reset_num_timesteps)

    def raw_reward(self, locals_: dict) -> float:
        return float(locals_["rewards"][0])

    def training_state(self) -> dict:
        return {"agent": self.model.training_state(), "env": self.env.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.model.load_training_state(state["agent"])
        self.env.load_state_dict(state["env"])

    def save_model(self, path: Path, meta: dict) -> None:
        self.model.save(path, {**meta, "env_overrides": dict(ENV_OVERRIDES)})


class MTKDRLPolicy(Policy):
    """A saved MTKD-RL agent: (B, F) per-sample state -> (B, 2M) "linear" action of its weights."""

    def __init__(self, model: MTKDRL, meta: dict) -> None:
        super().__init__(meta["algo"], meta["env_overrides"], meta)
        self.model = model

    def predict(self, obs, state=None, episode_start=None, deterministic: bool = True):
        return self.model.predict(obs, state, episode_start, deterministic)


def _validate_mtkd(name: str) -> Callable[[dict], dict]:
    def validate(hp: dict) -> dict:
        out = validate_dataclass(name, MTKDRLConfig, hp, extra={"n_timesteps": int, "env_kwargs": dict})
        MTKDRLConfig(**{k: v for k, v in out.items() if k not in _RUN_KEYS}).validate()
        if "n_timesteps" in out and out["n_timesteps"] < 1:
            raise ConfigError(f"hyperparameter n_timesteps: expected an integer >= 1, got {out['n_timesteps']}")
        return out

    return validate


def _load_mtkd(path: Path, meta: dict) -> Policy:
    return MTKDRLPolicy(MTKDRL.load(path), meta)


def _sb3_spec(name: str) -> AlgoSpec:
    return AlgoSpec(name=name, env_overrides={},
                    validate=lambda hp: validate_sb3(name, SB3_CLASSES()[name], hp),
                    build=lambda cfg, hp, seed, device: SB3Agent(name, cfg, hp, seed, device),
                    load_policy=lambda path, meta: load_sb3_policy(path, meta))


def _mtkd_spec(name: str, variant: str) -> AlgoSpec:
    return AlgoSpec(name=name, env_overrides=dict(ENV_OVERRIDES), validate=_validate_mtkd(name),
                    build=lambda cfg, hp, seed, device: MTKDAgent(name, variant, cfg, hp, seed, device),
                    load_policy=_load_mtkd)


REGISTRY: Dict[str, AlgoSpec] = {
    "ppo": _sb3_spec("ppo"),
    "a2c": _sb3_spec("a2c"),
    "sac": _sb3_spec("sac"),
    "td3": _sb3_spec("td3"),
    "mtkd-rl": _mtkd_spec("mtkd-rl", "code"),
    "mtkd-rl-pg": _mtkd_spec("mtkd-rl-pg", "pg"),
}


def get_spec(algo: str) -> AlgoSpec:
    if algo not in REGISTRY:
        raise ConfigError(f"unknown algo {algo!r}; expected one of {list(REGISTRY)}")
    return REGISTRY[algo]
