"""rl-zoo3-style hyperparameter files: shipped per-algorithm defaults, user files and overrides.

A file is a YAML/JSON mapping, either keyed by env id like rl-zoo3 (`MultiTeacherKD-v0: {...}`)
or flat. rl-zoo3 tunes per env id; our scenarios are configurations of one env id, so a section may
hold `scenarios: {<scenario>: {...}}`, values that replace the section's own when the run's env
config names that scenario (e.g. a larger `n_timesteps` where the policy must learn to read a
distribution of teacher pools). `resolve_hyperparams` merges, in order, the shipped
`agents/hyperparams/<algo>.yml`, its section for the scenario, a user file, that file's section for
the scenario and a dict of overrides, then validates every key against the algorithm: an unknown
key or a wrong type is a one-line `ConfigError`.

Values stay plain (JSON-able) so that the resolved dict is what the run logs and saves; the
conversion to library objects (schedules, activation classes, action noise) happens at build time.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Iterable, Literal, Optional, Tuple, Union

from pydantic import Field, Strict

from mtkd_env import ENV_ID
from mtkd_env.config import ConfigError, load_config_file
from mtkd_env.runtime.errors import did_you_mean, short_repr
from mtkd_env.runtime.options import Cli, settings

__all__ = ["HYPERPARAMS_DIR", "default_hyperparams", "resolve_episode_steps", "load_hyperparams_file", "resolve_hyperparams",
           "validate_sb3", "sb3_kwargs", "validate_dataclass", "check_hyperparams", "activations", "apply_env_kwargs",
           "NormalizeOptions", "VEC_ENVS", "check_n_envs"]

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

# Constructor arguments the run sets itself (not hyperparameters).
_SB3_RUN_ARGS = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model",
                 "action_noise", "replay_buffer_class", "replay_buffer_kwargs", "rollout_buffer_class",
                 "rollout_buffer_kwargs", "policy_kwargs"}
NOISE_TYPES = ("normal", "ornstein-uhlenbeck")
VEC_ENVS = ("batched", "subproc", "dummy")
"""How n_envs > 1 sub-envs run (hyperparameter `vec_env`; see `agents.vec_env`)."""
_COUNT = Annotated[int, Field(ge=1)]
_NONNEG = Annotated[float, Field(ge=0)]
_UNIT = Annotated[float, Field(ge=0, le=1)]
_SCHEDULE = Annotated[Union[Annotated[float, Field(gt=0)], Annotated[str, Field(pattern=r"^lin_[0-9.]+(e[-+]?[0-9]+)?$")]],
                      Cli(expected="a number > 0 or 'lin_<number>'")]
# rl-zoo3 keys that are not constructor arguments (`n_envs`: sub-envs; `vec_env`: how they run, see `agents.vec_env`).
_SB3_EXTRA: Dict[str, Any] = {"n_timesteps": _COUNT, "policy": str, "normalize": Union[bool, Dict[str, Any]],
                              "policy_kwargs": Dict[str, Any], "env_kwargs": Dict[str, Any], "n_envs": _COUNT,
                              "vec_env": Optional[str]}
_NOISE_KEYS: Dict[str, Any] = {"noise_type": Literal[NOISE_TYPES], "noise_std": _NONNEG}
_SCHEDULABLE = {"learning_rate", "clip_range", "clip_range_vf"}
_DECLARED: Dict[str, Any] = {  # bounds of values SB3 would take without complaint but that cannot be meant
    "gamma": _UNIT, "gae_lambda": _UNIT, "tau": _UNIT, "n_steps": _COUNT, "batch_size": _COUNT, "n_epochs": _COUNT,
    "buffer_size": _COUNT, "policy_delay": _COUNT, "learning_starts": Annotated[int, Field(ge=0)], "vf_coef": _NONNEG,
    "max_grad_norm": _NONNEG, "target_policy_noise": _NONNEG, "target_noise_clip": _NONNEG,
    "learning_rate": _SCHEDULE, "clip_range": _SCHEDULE, "clip_range_vf": Optional[_SCHEDULE],
    "train_freq": Annotated[Union[_COUNT, Annotated[Tuple[_COUNT, Literal["step", "episode"]], Strict(False)]],
                            Cli(expected="an integer >= 1 or [integer, 'step'|'episode']")]}


@settings(prefix="hyperparameter normalize.", unknown="hyperparameter normalize key(s)", known="keys")
class NormalizeOptions:
    """The `normalize: {...}` mapping of an SB3 hyperparameter file (`VecNormalize` arguments)."""

    norm_obs: bool = True
    """Normalise observations."""
    norm_reward: bool = True
    """Normalise rewards by the running return's standard deviation."""
    clip_obs: Annotated[float, Field(ge=0)] = 10.0
    """Clip normalised observations to [-clip_obs, clip_obs]."""
    clip_reward: Annotated[float, Field(ge=0)] = 10.0
    """Clip normalised rewards to [-clip_reward, clip_reward]."""
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99
    """Discount of the running return."""
    epsilon: Annotated[float, Field(ge=0)] = 1e-8
    """Added to the variance before division."""


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


def _with_scenario(hp: dict, scenario: Optional[str], source: str) -> dict:
    """`hp` without its `scenarios` key, updated with that key's section for `scenario` (if any)."""
    from mtkd_env.scenarios import SCENARIOS

    hp = dict(hp)
    sections = hp.pop("scenarios", None) or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"hyperparameter scenarios in {source}: expected a mapping of scenario names to "
                          f"mappings of hyperparameters, got {short_repr(sections)}")
    unknown = sorted(set(sections) - set(SCENARIOS))
    if unknown:
        raise ConfigError(f"hyperparameter scenarios in {source}: unknown scenario(s) {unknown}"
                          f"{did_you_mean(unknown, SCENARIOS)}; known: {sorted(SCENARIOS)}")
    if "scenarios" in sections.get(scenario, {}):
        raise ConfigError(f"hyperparameter scenarios.{scenario} in {source}: a scenario's section cannot "
                          f"hold another `scenarios`")
    hp.update(sections.get(scenario, {}))
    return hp


def resolve_hyperparams(algo: str, validate: Callable[[dict], dict], file: Optional[Union[str, Path]] = None,
                        overrides: Optional[dict] = None, scenario: Optional[str] = None) -> dict:
    """Shipped defaults <- their `scenarios.<scenario>` <- file <- its `scenarios.<scenario>` <-
    overrides, validated by the algorithm's `validate`. `scenario`: the run's env config's."""
    hp = _with_scenario(default_hyperparams(algo), scenario, str(HYPERPARAMS_DIR / f"{algo}.yml"))
    if file is not None:
        hp.update(_with_scenario(load_hyperparams_file(file), scenario, repr(str(file))))
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"hyperparams: expected a dict, got {type(overrides).__name__}")
        hp.update(overrides)
    return validate(hp)


def check_hyperparams(algo_name: str, declared: Dict[str, Any], hp: dict) -> dict:
    """`hp` checked against `declared` (name -> type hint with its bounds and choices), as a settings
    class: an unknown key or a wrong type or value is a one-line `ConfigError`. Returns the checked values."""
    cls = dataclasses.make_dataclass(f"{algo_name}_hyperparameters",
                                     [(k, tp, dataclasses.field(default=None)) for k, tp in declared.items()])
    checked = settings(cls, prefix="hyperparameter ", unknown=f"{algo_name} hyperparameter(s)", known="")(**hp)
    return {k: getattr(checked, k) for k in hp}


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
def _from_default(key: str, default: Any) -> Any:
    """The declared type of an SB3 constructor argument (its bounds), else the type of its default."""
    if key in _DECLARED:
        return _DECLARED[key]
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return _NONNEG if key == "ent_coef" else float
    if isinstance(default, str):  # e.g. SAC ent_coef "auto" / "auto_0.1" or a number
        return Union[_NONNEG, str] if key == "ent_coef" else Union[float, str]
    return Union[float, int, str, bool, None]


def check_n_envs(n_envs: Any, vec_env: Optional[str], distributed: bool) -> None:
    """One-line `ConfigError` for an invalid `n_envs` / `vec_env` pair."""
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ConfigError(f"n_envs: expected an integer >= 1, got {n_envs!r}")
    if vec_env is not None and vec_env not in VEC_ENVS:
        raise ConfigError(f"vec_env: expected one of {list(VEC_ENVS)}, got {vec_env!r}"
                          + did_you_mean([vec_env], VEC_ENVS))
    if n_envs > 1 and distributed:
        raise ConfigError("n_envs: under torchrun every rank distils one student; use n_envs 1 (or no torchrun "
                          "and --n-envs K)")


def validate_sb3(algo_name: str, cls: type, hp: dict) -> dict:
    """Check an SB3 hyperparameter dict against `cls.__init__`; return a cleaned copy."""
    params = inspect.signature(cls.__init__).parameters
    off_policy = "replay_buffer_class" in params
    declared = {k: _from_default(k, p.default) for k, p in params.items() if k not in _SB3_RUN_ARGS}
    declared.update(_SB3_EXTRA, **(_NOISE_KEYS if off_policy else {}))
    if not off_policy:  # "episode": one rollout = one episode of the env (see `resolve_episode_steps`)
        episode = Annotated[Union[_COUNT, Literal["episode"]], Cli(expected="an integer >= 1 or 'episode'")]
        declared.update({k: episode for k in ("n_steps", "batch_size") if k in declared})
    out = check_hyperparams(algo_name, declared, hp)
    if isinstance(out.get("train_freq"), tuple):
        out["train_freq"] = list(out["train_freq"])
    if "n_envs" in out or "vec_env" in out:
        check_n_envs(out.get("n_envs", 1), out.get("vec_env"), distributed=False)
    train_freq = out.get("train_freq")
    if off_policy and out.get("n_envs", 1) > 1 and isinstance(train_freq, list) and train_freq[1] == "episode":
        raise ConfigError(f"hyperparameter train_freq: {algo_name} with n_envs {out['n_envs']} collects steps, not "
                          f"episodes (SB3 trains episodically on one env only); use train_freq as a step count")
    if isinstance(out.get("normalize"), dict):
        NormalizeOptions(**out["normalize"])
    pk = out.get("policy_kwargs") or {}
    if "activation_fn" in pk and pk["activation_fn"] not in activations():
        raise ConfigError(f"hyperparameter policy_kwargs.activation_fn: expected one of {sorted(activations())}, "
                          f"got {short_repr(pk['activation_fn'])}")
    return out


def _schedule(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        from stable_baselines3.common.utils import LinearSchedule

        start = float(value[4:])
        return LinearSchedule(start, 0.0, 1.0)
    return value


def resolve_episode_steps(hp: dict, episode_steps: int) -> dict:
    """`hp` with `n_steps` / `batch_size` "episode" replaced by the env's steps per episode: one
    rollout per episode, so that gSDE noise resampled per rollout (`sde_sample_freq: -1`) is one
    consistent perturbation per training student whatever the scenario's episode length."""
    return {k: (episode_steps if k in ("n_steps", "batch_size") and v == "episode" else v) for k, v in hp.items()}


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


# --- dataclass-configured agents (MTKD-RL, RMTS) ----------------------------------------------
def validate_dataclass(algo_name: str, cls: type, hp: dict, extra: Optional[Dict[str, Any]] = None) -> dict:
    """Check `hp` against the declared fields of settings class `cls` plus `extra` keys (name -> type)."""
    declared = {f.name: typing.get_type_hints(cls, include_extras=True)[f.name] for f in dataclasses.fields(cls)}
    return check_hyperparams(algo_name, dict(declared, **(extra or {})), hp)
