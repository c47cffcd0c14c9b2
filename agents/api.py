"""Public API of the agents package (the contract used by `baselines.compare`).

    ALGOS                                  names of the trainable algorithms
    train(algo, *, env_config, ...)        train one agent; returns its run directory
    resume(run_dir, ...)                   continue an interrupted (or extend a finished) run
    load_policy(path)                      a run directory or model.zip -> `Policy`
"""

from __future__ import annotations

import pathlib
from typing import List, Optional, Union

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError, load_config_file

from .algos import REGISTRY, get_spec, load_policy
from .hyperparams import apply_env_kwargs, resolve_hyperparams
from .policy import Policy
from .run import Run, RunSettings, TrainingInterrupted

__all__ = ["ALGOS", "train", "resume", "load_policy", "Policy", "TrainingInterrupted", "prepare_run"]

ALGOS: tuple = tuple(REGISTRY)


def prepare_run(algo: str, *, env_config: Union[EnvConfig, dict, str, None], seed: int = 0,
                total_timesteps: Optional[int] = None, out_dir: str = "runs", wandb_mode: Optional[str] = "disabled",
                wandb_project: str = "mtkd-rl", wandb_group: Optional[str] = None, hyperparams: Optional[dict] = None,
                hyperparams_file: Optional[Union[str, pathlib.Path]] = None, eval_episodes: int = 0,
                show_progress: bool = True, device: str = "cpu", save_freq: int = 1000,
                callbacks: Optional[list] = None, command: Optional[List[str]] = None) -> Run:
    """Validate the inputs, build the agent and create the run directory (nothing is written
    when any input is bad). `train` = `prepare_run(...).train()`."""
    from mtkd_env.env import make_config

    from mtkd_env.runtime.tracking import default_wandb_mode

    spec = get_spec(algo)
    if isinstance(env_config, str):
        env_config = load_config_file(env_config)
    explicit = set(env_config) if isinstance(env_config, dict) else None
    base = make_config(env_config)
    hp = resolve_hyperparams(algo, spec.validate, hyperparams_file, hyperparams, scenario=base.scenario)
    cfg = apply_env_kwargs(base, hp.get("env_kwargs"), explicit)
    total = total_timesteps if total_timesteps is not None else hp.get("n_timesteps")
    if total is None:
        raise ConfigError(f"total_timesteps: not given and the {algo} hyperparameters have no n_timesteps")
    settings = RunSettings(algo=algo, total_timesteps=int(total), seed=seed, out_dir=str(out_dir),
                           wandb_mode=wandb_mode if wandb_mode is not None else default_wandb_mode(),
                           wandb_project=wandb_project, wandb_group=wandb_group, device=device, save_freq=save_freq,
                           eval_episodes=eval_episodes, show_progress=show_progress)
    return Run.create(settings, cfg, hp, extra_callbacks=callbacks, command=command)


def train(algo: str, *, env_config: Union[EnvConfig, dict, str, None], seed: int = 0,
          total_timesteps: Optional[int] = None, out_dir: str = "runs", wandb_mode: Optional[str] = "disabled",
          wandb_project: str = "mtkd-rl", wandb_group: Optional[str] = None, hyperparams: Optional[dict] = None,
          eval_episodes: int = 0, show_progress: bool = True, hyperparams_file: Optional[Union[str, pathlib.Path]] = None,
          device: str = "cpu", save_freq: int = 1000, callbacks: Optional[list] = None) -> pathlib.Path:
    """Train `algo` on `env_config` and return the run directory.

    `hyperparams` override the shipped `agents/hyperparams/<algo>.yml` (and `hyperparams_file`);
    `total_timesteps=None` uses their `n_timesteps`. `wandb_mode=None` picks online/offline by
    login. `eval_episodes > 0` adds a final evaluation (trained policy vs equal weights on the
    same fresh-student seeds) to `summary.json`. `callbacks` are extra SB3 callbacks.
    Raises `ConfigError` on bad input (nothing written) and `TrainingInterrupted` on SIGINT/SIGTERM
    (after saving a checkpoint that `resume` continues).
    """
    return prepare_run(algo, env_config=env_config, seed=seed, total_timesteps=total_timesteps, out_dir=out_dir,
                       wandb_mode=wandb_mode, wandb_project=wandb_project, wandb_group=wandb_group,
                       hyperparams=hyperparams, hyperparams_file=hyperparams_file, eval_episodes=eval_episodes,
                       show_progress=show_progress, device=device, save_freq=save_freq, callbacks=callbacks).train()


def resume(run_dir: Union[str, pathlib.Path], *, total_timesteps: Optional[int] = None,
           wandb_mode: Optional[str] = None, show_progress: Optional[bool] = None, device: Optional[str] = None,
           callbacks: Optional[list] = None) -> pathlib.Path:
    """Continue the run in `run_dir` from its checkpoint with its saved configuration.

    On the CPU, a run interrupted and resumed ends bit-identical to an uninterrupted one.
    `total_timesteps` extends the budget of a finished run.
    """
    return Run.resume(pathlib.Path(run_dir), total_timesteps, wandb_mode, show_progress, device, callbacks).train()
