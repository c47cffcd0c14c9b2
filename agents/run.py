"""A training run: run directory, logging, progress bar, checkpoints, signals (their exceptions and
handlers: `agents.interrupts`), resume and summary.

Run directory (`{out}/{env_id}__{algo}__{seed}__{unix_time}`, the rl-zoo3/CleanRL run name):

    config.yaml          everything that defines the run (env, algo, hyperparameters, seed, budget,
                         versions, git commit, command line); `--resume` rebuilds the run from it
    model.zip            the latest policy (SB3 zip + mtkd_meta.json; see `agents.modelfile`)
    checkpoint/state.pt  resumable state: agent, env episode, RNGs, logging accumulators
    metrics.jsonl        one JSON row per logger dump (per step, per episode, SB3 train stats)
    tb/                  TensorBoard events of the same scalars
    wandb/               the local W&B run (offline/online modes)
    summary.json         final summary (written when the budget is done)
    learning_curve.png   per training episode: mean weight per teacher, advantage over the AVER
                         twin (twin rewards), return (`agents.curves`)

Checkpoints are taken only at safe points (before an env step for the MTKD-RL agents, at
rollout boundaries for SB3), so a resumed run continues exactly where it stopped. SIGINT and
SIGTERM request a checkpoint at the next safe point and end the run with `TrainingInterrupted`;
a second signal aborts at once (the last periodic checkpoint stays).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, List, Literal, Optional

from pydantic import Field

import yaml
from stable_baselines3.common.callbacks import BaseCallback

from mtkd_env import ENV_ID, EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.runtime.distributed import context as dist_context
from mtkd_env.runtime import collective
from mtkd_env.runtime.files import atomic_write_text, check_output_dir, torch_save_atomic
from mtkd_env.runtime.options import Cli, DeviceName, settings
from mtkd_env.runtime.resources import resolve_device
from mtkd_env.runtime.tracking import WANDB_MODES, git_info, package_versions, start_wandb

from . import tracking
from .algos import Agent, get_spec
from .callback import RunCallback
from .interrupts import TrainingAborted, TrainingInterrupted, catch_stop_signals, restore_handlers
from .checkpoint import (CHECKPOINT, CONFIG_NAME, FORMAT, SUMMARY_NAME, capture_rng, loader_overrides, rank_agent_state,
                         read_run, restore_rng)
from .modelfile import MODEL_NAME
from .summary import flatten, summarize

__all__ = ["RunSettings", "TrainingInterrupted", "TrainingAborted", "Run", "CLI_EVAL_EPISODES"]

CLI_EVAL_EPISODES = 10
"""`agents.train`'s default `--eval-episodes` (the API's is 0)."""


@settings
class RunSettings:
    """How to run an algorithm (everything but the env config and hyperparameters); every field is
    the `agents.train` flag of the same name (`_` -> `-`, or the `flag` given)."""

    algo: Annotated[str, Cli(metavar='NAME')]
    """Algorithm: ppo, a2c, sac, td3 (Stable-Baselines3), ppo-set, ppo-sample (PPO per teacher or
    per sample), ppo-credit (per sample, dense credit reward), mtkd-rl, mtkd-rl-pg (the MTKD-RL
    agent), rmts (Reinforced Multi-Teacher Selection); see `agents.api.ALGOS`."""
    total_timesteps: Annotated[int, Field(ge=1), Cli(help_default="the hyperparameters' n_timesteps")]
    """Env steps to train."""
    seed: Annotated[int, Field(ge=0, le=2 ** 32 - 1)] = 0
    """Seed of the agent, the env and the evaluation students."""
    out_dir: Annotated[str, Cli(flag='--out', metavar='DIR')] = 'runs'
    """Parent folder of the run directory."""
    wandb_mode: Annotated[Literal[WANDB_MODES], Cli(flag="--wandb", help_default="$WANDB_MODE, else online if logged in, "
                                                                           "else offline")] = "disabled"
    """W&B mode."""
    wandb_project: str = "mtkd-rl"
    """W&B project."""
    wandb_group: Optional[str] = None
    """W&B group, e.g. an experiment name."""
    device: DeviceName = "cpu"
    """Torch device of the agent: cpu, cuda, cuda:N or auto (the env's device is the EnvConfig field)."""
    save_freq: Annotated[int, Field(ge=0)] = 1000
    """Env steps between periodic checkpoints (taken at the next safe point); 0 = only at the end."""
    eval_episodes: Annotated[int, Field(ge=0), Cli(help_default=str(CLI_EVAL_EPISODES))] = 0
    """Fresh students for the final summary, each under the trained policy and equal weights."""
    show_progress: Annotated[bool, Cli(flag='--progress')] = True
    """Show a progress bar."""

    def validate(self) -> None:
        """Check the fields again (after edits) and that the device exists (CUDA asked for but absent)."""
        dataclasses.replace(self)
        resolve_device(self.device)


def _rank_config(config: EnvConfig, ctx) -> EnvConfig:
    # Teacher-training progress bars would repeat rank 0's on every other rank.
    return config if ctx.is_main else config.replace(show_progress=False)


def _make_unique_dir(base: Path) -> Path:
    """Create and return `base`, else the first free `base_1`, `base_2`, ...: `mkdir` itself claims
    the name, so two runs started together into one `--out` never get the same folder (checking
    `exists()` first and then creating it would race)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    path, i = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, i = Path(f"{base}_{i}"), i + 1


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


# --- the run -------------------------------------------------------------------------------------
class Run:
    """Build with `Run.create(...)` (new) or `Run.resume(...)`, then call `train()`."""

    def __init__(self, settings: RunSettings, env_config: EnvConfig, hyperparams: dict, agent: Agent,
                 run_dir: Path, config: dict, extra_callbacks: Optional[List[BaseCallback]] = None) -> None:
        self.settings, self.env_config, self.hyperparams = settings, env_config, hyperparams
        self.agent, self.run_dir, self.config = agent, run_dir, config
        self.extra_callbacks = list(extra_callbacks or [])
        self.dist = dist_context()
        env = agent.env
        self.teacher_keys = [_slug(f"{m}_{n}") for m, n in enumerate(env.teacher_names)]
        self.separate_weights = bool(env.config.separate_feature_weights)
        self.callback = RunCallback(self)
        self.stop_signal: Optional[int] = None
        """The signal the run stops on, decided at a safe point: under torch.distributed the one any
        rank had received there, the same on every rank."""
        self._received: Optional[int] = None
        """The signal this process received (set by the handler at any time)."""
        self.last_save = 0
        self.wall_time = 0.0
        self.wandb_run = None
        self.logger = None
        self._t0 = 0.0
        self._rng_to_restore: Optional[dict] = None
        self.discarded = False
        """True once a run that ended before its first checkpoint has had its directory removed."""
        self._made_out_dir = False

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: RunSettings, env_config: EnvConfig, hyperparams: dict,
               extra_callbacks: Optional[List[BaseCallback]] = None, command: Optional[List[str]] = None) -> "Run":
        """Validate everything and build the agent, then create the run directory.

        Under torch.distributed every rank builds its agent and env (rank 0 first, so missing
        teachers are trained into the cache once); only rank 0 creates the directory, and every
        rank gets its path and config."""
        settings.validate()
        check_output_dir(settings.out_dir, "--out")
        ctx = dist_context()
        spec = get_spec(settings.algo)
        effective = env_config.replace(**spec.env_overrides)
        agent = collective.everywhere(
            ctx, lambda: spec.build(_rank_config(effective, ctx), hyperparams, settings.seed, settings.device),
            rank0_first=True)

        def make_dir() -> tuple:
            name = f"{ENV_ID}__{settings.algo}__{settings.seed}__{int(time.time())}"
            base = Path(settings.out_dir) / name
            config = {"run_name": None, "env_id": ENV_ID, "algo": settings.algo, "seed": settings.seed,
                      "total_timesteps": settings.total_timesteps, "world_size": ctx.world_size,
                      "env": effective.to_dict(), "env_overrides": dict(spec.env_overrides),
                      "hyperparams": hyperparams, "run": dataclasses.asdict(settings),
                      "versions": package_versions(), "git": git_info(),
                      "command": list(command if command is not None else sys.argv),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wandb_run_id": None}
            yaml.safe_dump(config, sort_keys=False)  # fails before anything is written
            run_dir = _make_unique_dir(base)
            config["run_name"] = run_dir.name
            atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False))
            return str(run_dir), config

        out_existed = Path(settings.out_dir).is_dir()
        run_dir, config = collective.on_rank0(ctx, make_dir)
        run = cls(settings, effective, hyperparams, agent, Path(run_dir), config, extra_callbacks)
        run._made_out_dir = not out_existed
        return run

    @classmethod
    def resume(cls, run_dir: Path, total_timesteps: Optional[int] = None, wandb_mode: Optional[str] = None,
               show_progress: Optional[bool] = None, device: Optional[str] = None,
               extra_callbacks: Optional[List[BaseCallback]] = None) -> "Run":
        """Rebuild a run from its directory and load its checkpoint (nothing is written here).

        Under torch.distributed rank 0 reads the files and sends them to the other ranks (which
        need no access to the run directory); the world size must be the run's."""
        run_dir = Path(run_dir)
        ctx = dist_context()
        config, state = collective.on_rank0(ctx, lambda: read_run(run_dir))
        saved_world = int(config.get("world_size", 1))
        if saved_world != ctx.world_size:
            raise ConfigError(f"--resume {str(run_dir)!r}: the run was trained with world size {saved_world} and "
                              f"this launch has world size {ctx.world_size}; resume it with {saved_world} "
                              f"process(es) in total (the data shards and the checkpoint depend on it)")
        spec = get_spec(config["algo"])
        run_fields = {f.name for f in dataclasses.fields(RunSettings)}
        settings = RunSettings(**{k: v for k, v in config["run"].items() if k in run_fields})
        overrides = {"total_timesteps": total_timesteps, "wandb_mode": wandb_mode, "show_progress": show_progress,
                     "device": device}
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        env_config = EnvConfig.from_dict(config["env"])
        hyperparams = spec.validate(dict(config["hyperparams"]))
        if state.get("algo") != settings.algo:
            raise ConfigError(f"--resume {str(run_dir)!r}: {CHECKPOINT} is not a format-{FORMAT} checkpoint of "
                              f"algo {settings.algo!r}")
        agent = collective.everywhere(
            ctx, lambda: spec.build(_rank_config(env_config, ctx), hyperparams, settings.seed, settings.device),
            rank0_first=True)
        config = dict(config, total_timesteps=settings.total_timesteps, run=dataclasses.asdict(settings))
        run = cls(settings, env_config, hyperparams, agent, run_dir, config, extra_callbacks)
        agent.load_training_state(rank_agent_state(state, ctx.rank, ctx.world_size))
        run.callback.load_state_dict(state["callback"])
        run.last_save, run.wall_time = int(state["num_timesteps"]), float(state["wall_time"])
        run.config["wandb_run_id"] = state.get("wandb_run_id")
        run._rng_to_restore = state["rng"]
        return run

    # --- training ------------------------------------------------------------------------------
    def _start_logging(self, resumed: bool) -> None:
        if not self.dist.is_main:  # only rank 0 logs: the other ranks record into a logger without outputs
            from stable_baselines3.common.logger import Logger

            self.logger = Logger(folder=None, output_formats=[])
            self.agent.model.set_logger(self.logger)
            return
        metrics = self.run_dir / "metrics.jsonl"
        if resumed:  # a process killed while writing a file atomically left its temporary copy
            for leftover in [*self.run_dir.glob(".*.tmp"), *(self.run_dir / CHECKPOINT).parent.glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
        if resumed and metrics.exists():
            # Rows past the checkpoint were logged after it; the resumed run writes them again.
            # A torn last line (the process was killed mid-write) is one of them.
            rows = [line for line, row in tracking.metric_lines(metrics)
                    if isinstance(row.get("global_step"), int) and row["global_step"] <= self.last_save]
            atomic_write_text(metrics, "".join(r + "\n" for r in rows))
        s = self.settings
        self.wandb_run = start_wandb(
            s.wandb_mode, project=s.wandb_project, group=s.wandb_group, name=self.config["run_name"],
            config=self.config, run_dir=self.run_dir, run_id=self.config.get("wandb_run_id"),
            tags=[s.algo, f"sb3-{self.config['versions']['stable_baselines3']}"])
        if self.wandb_run is not None and self.config.get("wandb_run_id") != self.wandb_run.id:
            self.config["wandb_run_id"] = self.wandb_run.id
            atomic_write_text(self.run_dir / CONFIG_NAME, yaml.safe_dump(self.config, sort_keys=False))
        self.logger = tracking.make_logger(self.run_dir, self.wandb_run)
        self.agent.model.set_logger(self.logger)

    def _model_meta(self) -> dict:
        return {"algo": self.settings.algo, "env_id": ENV_ID, "env_config": self.env_config.to_dict(),
                "hyperparams": self.hyperparams, "teacher_names": list(self.agent.env.teacher_names),
                "seed": self.settings.seed, "num_timesteps": self.agent.num_timesteps, "run_name": self.config["run_name"]}

    def save_checkpoint(self) -> None:
        """Rank 0 writes the model and checkpoint; under torch.distributed every rank must call
        this at the same point, since every rank's data-loader state is gathered into it."""
        n = self.agent.num_timesteps
        loaders = None
        if self.dist.enabled:
            loaders = collective.gather_to_rank0(self.dist, self.agent.env.state_dict()["engine"]["loader"])
        self.last_save = n
        if not self.dist.is_main:
            return
        agent_state = self.agent.training_state()
        state = {"format": FORMAT, "algo": self.settings.algo, "num_timesteps": n,
                 "agent": agent_state, "rng": capture_rng(), "callback": self.callback.state_dict(),
                 "wall_time": self.wall_time + (time.time() - self._t0),
                 "wandb_run_id": self.config.get("wandb_run_id"),
                 "dist": {"world_size": self.dist.world_size,
                          "loader_overrides": loader_overrides(loaders) if loaders else [{}]}}
        self.agent.save_model(self.run_dir / MODEL_NAME, self._model_meta())
        torch_save_atomic(state, self.run_dir / CHECKPOINT)

    def safe_point(self) -> None:
        """Called where the agent's state is complete (no half-collected rollout)."""
        if self.logger is not None and self.logger.name_to_value:
            self.logger.dump(self.agent.num_timesteps)  # pending train stats belong before the checkpoint
        n = self.agent.num_timesteps
        self.stop_signal = collective.agreed_signal(self.dist, self._received)
        if self.stop_signal is not None:
            self.save_checkpoint()
            raise TrainingInterrupted(self.run_dir, n, self.stop_signal, self.dist.world_size)
        if self.settings.save_freq > 0 and n - self.last_save >= self.settings.save_freq:
            self.save_checkpoint()

    def _handle_signal(self, signum: int, frame: Any) -> None:
        if self._received is not None:
            self._restore_handlers()
            raise TrainingAborted(signum)
        self._received = signum
        if self.stop_signal is None and self.dist.is_main:  # else already stopping on another rank's copy
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next safe point "
                  "(send it again to abort without saving)", file=sys.stderr, flush=True)

    def _install_handlers(self) -> None:
        self._old_handlers = catch_stop_signals(self._handle_signal)

    def _restore_handlers(self) -> None:
        restore_handlers(getattr(self, "_old_handlers", {}))
        self._old_handlers = {}

    def train(self) -> Path:
        """Train until `total_timesteps`; returns the run directory (raises `TrainingInterrupted`)."""
        resumed = self._rng_to_restore is not None
        self._install_handlers()
        try:
            self._start_logging(resumed)
            if resumed:
                restore_rng(self._rng_to_restore)
            remaining = self.settings.total_timesteps - self.agent.num_timesteps
            self._t0 = time.time()
            if remaining > 0:
                callbacks = [self.callback] + self.extra_callbacks
                self.agent.learn(remaining, callback=callbacks, reset_num_timesteps=not resumed)
            if self.logger.name_to_value:
                self.logger.dump(self.agent.num_timesteps)
            self.save_checkpoint()
            self.stop_signal = collective.agreed_signal(self.dist, self._received)
            if self.stop_signal is not None:  # arrived after the last safe point: skip the evaluation
                raise TrainingInterrupted(self.run_dir, self.agent.num_timesteps, self.stop_signal,
                                         self.dist.world_size)
        except BaseException:  # TrainingInterrupted, a second Ctrl-C, or an error: close the logs
            self._finish(interrupted=True)
            if not resumed:
                self._discard_if_unsaved()
            raise
        finally:
            self._restore_handlers()
            self.callback.close()
        self.wall_time += time.time() - self._t0
        summary = summarize(self)  # under torch.distributed every rank runs the evaluation episodes
        if self.dist.is_main:
            atomic_write_text(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=1))
        self._finish(interrupted=False, summary=summary)
        if self.dist.is_main:
            from .curves import CURVE_NAME, plot_learning_curve

            plot_learning_curve(tracking.read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / CURVE_NAME,
                                title=self.run_dir.name)
        return self.run_dir

    def _discard_if_unsaved(self) -> None:
        """A new run that ends before its first checkpoint cannot be resumed: remove its directory
        (config, logs) rather than leave a half-made run behind (`discarded` says so)."""
        if self.dist.is_main and not (self.run_dir / CHECKPOINT).is_file():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._made_out_dir:
                try:
                    self.run_dir.parent.rmdir()  # only if empty
                except OSError:
                    pass
            self.discarded = True

    def _finish(self, interrupted: bool, summary: Optional[dict] = None) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.wandb_run is not None:
            if summary is not None:
                self.wandb_run.summary.update(flatten(summary))
                model = self.run_dir / MODEL_NAME
                if model.exists():  # files in the run's files dir are uploaded with the run
                    shutil.copy2(model, Path(self.wandb_run.dir) / MODEL_NAME)
            self.wandb_run.finish(exit_code=1 if interrupted else 0)
            self.wandb_run = None

    # --- summary -------------------------------------------------------------------------------
