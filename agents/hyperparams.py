"""rl-zoo3-style hyperparameter files: shipped per-algorithm defaults, user files and overrides.

A file is a YAML/JSON mapping, either keyed by env id like rl-zoo3 (`MultiTeacherKD-v0: {...}`)
or flat. `resolve_hyperparams` merges, in order, the shipped `agents/hyperparams/<algo>.yml`,
a user file and a dict of overrides, then validates every key against the algorithm: an unknown
key or a wrong type is a one-line `ConfigError`.

Values stay plain (JSON-able) so that the resolved dict is what the run logs and saves; the
conversion to library objects (schedules, activation classes, action noise) happens at build time.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Union

from mtkd_env import ENV_ID
from mtkd_env.config import ConfigError, load_config_file
from mtkd_env.runtime.errors import did_you_mean
from mtkd_env.runtime.options import check_type, is_instance

__all__ = ["HYPERPARAMS_DIR", "default_hyperparams", "load_hyperparams_file", "resolve_hyperparams",
           "validate_sb3", "sb3_kwargs", "validate_dataclass", "activations", "apply_env_kwargs"]

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

# Constructor arguments the run sets itself (not hyperparameters).
_SB3_RUN_ARGS = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model",
                 "action_noise", "replay_buffer_class", "replay_buffer_kwargs", "rollout_buffer_class",
                 "rollout_buffer_kwargs", "policy_kwargs"}
# rl-zoo3 keys that are not constructor arguments (`n_envs`: sub-envs; `vec_env`: how they run, see
# `agents.vec_env`).
_SB3_EXTRA = {"n_timesteps": int, "policy": str, "normalize": (bool, dict), "policy_kwargs": dict, "env_kwargs": dict,
              "n_envs": int, "vec_env": str}
_NOISE_KEYS = {"noise_type": str, "noise_std": float}
_SCHEDULABLE = {"learning_rate", "clip_range", "clip_range_vf"}
_NORMALIZE_KEYS = {"norm_obs": bool, "norm_reward": bool, "clip_obs": float, "clip_reward": float,
                   "gamma": float, "epsilon": float}
NOISE_TYPES = ("normal", "ornstein-uhlenbeck")
_BOUNDS = {  # (low, high), inclusive: values SB3 would take without complaint but that cannot be meant
    "n_timesteps": (1, None), "gamma": (0, 1), "gae_lambda": (0, 1), "tau": (0, 1), "n_steps": (1, None),
    "batch_size": (1, None), "n_epochs": (1, None), "buffer_size": (1, None), "learning_starts": (0, None),
    "vf_coef": (0, None), "ent_coef": (0, None), "max_grad_norm": (0, None), "noise_std": (0, None),
    "policy_delay": (1, None), "target_policy_noise": (0, None), "target_noise_clip": (0, None),
    "clip_obs": (0, None), "clip_reward": (0, None), "epsilon": (0, None)}
_POSITIVE = ("learning_rate", "clip_range", "clip_range_vf")


def activations() -> Dict[str, Any]:
    """Activation names accepted in `policy_kwargs.activation_fn` (no string evaluation, unlike rl-zoo3)."""
    from torch import nn

    return {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
            "silu": nn.SiLU}


def _section(data: dict, source: str) -> dict:
    if ENV_ID in data:
        data = data[ENV_ID]
    elif "default" in data and isinstance(data["default"], dict):
        data = data["default"]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"hyperparameters in {source}: expected a mapping of names to values, got "
                          f"{type(data).__name__}")
    return dict(data)


def default_hyperparams(algo: str) -> dict:
    """The shipped defaults of `algo` for `MultiTeacherKD-v0`."""
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    return _section(load_config_file(path), str(path))


def load_hyperparams_file(path: Union[str, Path]) -> dict:
    """A user hyperparameter file (YAML/JSON), keyed by env id or flat."""
    return _section(load_config_file(path), repr(str(path)))


def resolve_hyperparams(algo: str, validate: Callable[[dict], dict], file: Optional[Union[str, Path]] = None,
                        overrides: Optional[dict] = None) -> dict:
    """Shipped defaults <- file <- overrides, validated by the algorithm's `validate`."""
    hp = default_hyperparams(algo)
    if file is not None:
        hp.update(load_hyperparams_file(file))
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"hyperparams: expected a dict, got {type(overrides).__name__}")
        hp.update(overrides)
    return validate(hp)


def _refuse_unknown(algo_name: str, hp: dict, known: set) -> None:
    unknown = sorted(set(hp) - known)
    if unknown:
        raise ConfigError(f"unknown {algo_name} hyperparameter(s) {unknown}{did_you_mean(unknown, known)}; known: "
                          f"{sorted(known)}")


def apply_env_kwargs(config, env_kwargs: Optional[dict], explicit: Optional[Iterable[str]] = None):
    """The algorithm's env defaults (`env_kwargs` of its hyperparameters, as in rl-zoo3) under the
    user's env config: each field takes its `env_kwargs` value unless the user set it — named in
    `explicit` (the CLI knows which `--env`/`--env-config` fields were given) or, without that
    list, holding a value other than the `EnvConfig` default. Returns an `EnvConfig`."""
    from mtkd_env import EnvConfig

    if not env_kwargs:
        return config
    known = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = sorted(set(env_kwargs) - known)
    if unknown:
        raise ConfigError(f"hyperparameter env_kwargs: unknown EnvConfig field(s) {unknown}"
                          f"{did_you_mean(unknown, known)}")
    if explicit is None:
        defaults = EnvConfig()
        explicit = {k for k in env_kwargs if getattr(config, k) != getattr(defaults, k)}
    return config.replace(**{k: v for k, v in env_kwargs.items() if k not in set(explicit)})


# --- SB3 -------------------------------------------------------------------------------------
def _as_type(expected: Any) -> Any:
    """A tuple of accepted types as the typing Union `check_type` reads."""
    return typing.Union[tuple(expected)] if isinstance(expected, tuple) else expected


def _type_ok(value: Any, expected: Any) -> bool:
    return is_instance(value, _as_type(expected))

def _schedule_ok(value: Any) -> bool:
    if _type_ok(value, float):
        return True
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            float(value[4:])
            return True
        except ValueError:
            return False
    return False


def _coerce_number(value: Any) -> Any:
    # YAML 1.1 reads `3e-4` (no dot) as a string; accept numerals wherever a number is expected.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_sb3(algo_name: str, cls: type, hp: dict) -> dict:
    """Check an SB3 hyperparameter dict against `cls.__init__`; return a cleaned copy."""
    params = inspect.signature(cls.__init__).parameters
    allowed: Dict[str, Any] = {k: p.default for k, p in params.items() if k not in _SB3_RUN_ARGS}
    off_policy = "replay_buffer_class" in params
    extra = dict(_SB3_EXTRA, **(_NOISE_KEYS if off_policy else {}))
    _refuse_unknown(algo_name, hp, set(allowed) | set(extra))
    out = {}
    for key, value in hp.items():
        if key in extra:
            expected = extra[key]
            if expected is float:
                value = _coerce_number(value)
            check_type(f"hyperparameter {key}", value, _as_type(expected))
        elif key in _SCHEDULABLE:
            value = _coerce_number(value)
            if not (_schedule_ok(value) or (value is None and allowed[key] is None)):
                raise ConfigError(f"hyperparameter {key}: expected a number or 'lin_<number>', got {value!r}")
        elif key == "train_freq":
            if not (_type_ok(value, int) or (isinstance(value, (list, tuple)) and len(value) == 2
                                             and _type_ok(value[0], int) and value[1] in ("step", "episode"))):
                raise ConfigError(f"hyperparameter train_freq: expected an int or [int, 'step'|'episode'], got {value!r}")
            value = list(value) if isinstance(value, (list, tuple)) else value
        else:
            default = allowed[key]
            if isinstance(default, bool):
                expected = bool
            elif isinstance(default, int):
                expected = int
            elif isinstance(default, float):
                expected = float
                value = _coerce_number(value)
            elif isinstance(default, str):  # e.g. SAC ent_coef "auto" / "auto_0.1" or a number
                expected = (str, float)
                value = _coerce_number(value) if value not in ("auto",) and not str(value).startswith("auto") else value
            else:
                expected = (float, int, str, bool, type(None))
                value = _coerce_number(value)
            check_type(f"hyperparameter {key}", value, _as_type(expected))
        out[key] = value
    for key, value in out.items():
        _check_bounds(key, key, value)
    if "n_envs" in out or "vec_env" in out:
        from .vec_env import check_n_envs

        check_n_envs(out.get("n_envs", 1), out.get("vec_env"), distributed=False)
    train_freq = out.get("train_freq")
    if off_policy and out.get("n_envs", 1) > 1 and isinstance(train_freq, list) and train_freq[1] == "episode":
        raise ConfigError(f"hyperparameter train_freq: {algo_name} with n_envs {out['n_envs']} collects steps, not "
                          f"episodes (SB3 trains episodically on one env only); use train_freq as a step count")
    if isinstance(out.get("normalize"), dict):
        for k, v in out["normalize"].items():
            if k not in _NORMALIZE_KEYS:
                raise ConfigError(f"hyperparameter normalize.{k}: unknown key; known: {sorted(_NORMALIZE_KEYS)}")
            check_type(f"hyperparameter normalize.{k}", v, _NORMALIZE_KEYS[k])
            _check_bounds(f"normalize.{k}", k, v)
    if "noise_type" in out and out["noise_type"] not in NOISE_TYPES:
        raise ConfigError(f"hyperparameter noise_type: expected one of {list(NOISE_TYPES)}, got {out['noise_type']!r}")
    pk = out.get("policy_kwargs") or {}
    if "activation_fn" in pk and pk["activation_fn"] not in activations():
        raise ConfigError(f"hyperparameter policy_kwargs.activation_fn: expected one of {sorted(activations())}, "
                          f"got {pk['activation_fn']!r}")
    return out


def _check_bounds(label: str, key: str, value: Any) -> None:
    if isinstance(value, str) and value.startswith("lin_"):
        value = float(value[4:])
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    what = "an integer" if isinstance(value, int) else "a number"
    if key in _POSITIVE and not value > 0:
        raise ConfigError(f"hyperparameter {label}: expected {what} > 0, got {value!r}")
    low, high = _BOUNDS.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"hyperparameter {label}: expected {what} {bound}, got {value!r}")


def _schedule(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        from stable_baselines3.common.utils import LinearSchedule

        start = float(value[4:])
        return LinearSchedule(start, 0.0, 1.0)
    return value


def sb3_kwargs(hp: dict, num_actions: int) -> dict:
    """Constructor kwargs of the SB3 class (schedules, activations and action noise built)."""
    kwargs = {k: v for k, v in hp.items() if k not in _SB3_EXTRA and k not in _NOISE_KEYS}
    for key in _SCHEDULABLE & set(kwargs):
        kwargs[key] = _schedule(kwargs[key])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    pk = dict(hp.get("policy_kwargs") or {})
    if "activation_fn" in pk:
        pk["activation_fn"] = activations()[pk["activation_fn"]]
    if pk:
        kwargs["policy_kwargs"] = pk
    if hp.get("noise_type"):
        import numpy as np
        from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

        std = float(hp.get("noise_std", 0.1))
        noise_cls = NormalActionNoise if hp["noise_type"] == "normal" else OrnsteinUhlenbeckActionNoise
        kwargs["action_noise"] = noise_cls(mean=np.zeros(num_actions), sigma=std * np.ones(num_actions))
    return kwargs


# --- dataclass-configured agents (MTKD-RL) ---------------------------------------------------
def validate_dataclass(algo_name: str, cls: type, hp: dict, extra: Optional[Dict[str, Any]] = None) -> dict:
    """Check `hp` against the fields (and field types) of dataclass `cls` plus `extra` keys."""
    extra = extra or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    _refuse_unknown(algo_name, hp, set(fields) | set(extra))
    out = {}
    for key, value in hp.items():
        expected = extra.get(key) or hints[key]
        if expected is float or expected == Optional[float]:
            value = _coerce_number(value)
        check_type(f"hyperparameter {key}", value, expected)
        out[key] = value
    return out
