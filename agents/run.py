"""A training run: run directory, logging, progress bar, checkpoints, signals, resume and summary.

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
import math
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback

from mtkd_env import ENV_ID, EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.distributed import context as dist_context
from mtkd_env.stats import paired_stats

from . import collective, tracking
from .algos import get_spec
from .evaluation import eval_seeds, evaluate_equal, evaluate_policy, mean_std
from .modelfile import MODEL_NAME, atomic_write_text, torch_load, torch_save_atomic

__all__ = ["RunSettings", "TrainingInterrupted", "Run", "CHECKPOINT", "CONFIG_NAME", "SUMMARY_NAME",
           "format_summary", "load_run_config"]

CONFIG_NAME = "config.yaml"
CHECKPOINT = "checkpoint/state.pt"
SUMMARY_NAME = "summary.json"
_FORMAT = 1


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; `run_dir` resumes it."""

    def __init__(self, run_dir: Path, num_timesteps: int, signum: int, world_size: int = 1) -> None:
        how = ("python -m agents.train" if world_size == 1 else
               f"torchrun <the same {world_size} processes> -m agents.train")
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {num_timesteps}; resume with: "
                         f"{how} --resume {run_dir}")
        self.run_dir, self.num_timesteps, self.signum = run_dir, num_timesteps, signum


@dataclass
class RunSettings:
    """How to run an algorithm (everything but the env config and hyperparameters)."""

    algo: str
    total_timesteps: int
    seed: int = 0
    out_dir: str = "runs"
    wandb_mode: str = "disabled"
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    device: str = "cpu"
    save_freq: int = 1000
    """Env steps between periodic checkpoints (taken at the next safe point); 0 = only at the end."""
    eval_episodes: int = 0
    show_progress: bool = True

    def validate(self) -> None:
        if self.total_timesteps < 1:
            raise ConfigError(f"total_timesteps: expected an integer >= 1, got {self.total_timesteps}")
        if self.save_freq < 0:
            raise ConfigError(f"save_freq: expected an integer >= 0, got {self.save_freq}")
        if self.eval_episodes < 0:
            raise ConfigError(f"eval_episodes: expected an integer >= 0, got {self.eval_episodes}")
        if self.wandb_mode not in tracking.WANDB_MODES:
            raise ConfigError(f"wandb mode: expected one of {list(tracking.WANDB_MODES)}, got {self.wandb_mode!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {self.device!r} was requested but CUDA is not available; use 'cpu'")


# --- RNG -------------------------------------------------------------------------------------
def capture_rng() -> dict:
    """Global python, numpy and torch RNG states in a `weights_only`-loadable form."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                         "pos": int(np_state["state"]["pos"])}
    out = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                         "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a round trip through torch.save keeps them, lists are converted.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- run configuration file --------------------------------------------------------------------
def load_run_config(run_dir: Path) -> dict:
    """The `config.yaml` of a run, or a one-line `ConfigError` if `run_dir` holds no run."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no run found (expected {CONFIG_NAME} and {CHECKPOINT} "
                          "written by agents.train)")
    try:
        data = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--resume {str(run_dir)!r}: {CONFIG_NAME} is not valid YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not {"algo", "env", "hyperparams", "run"} <= set(data):
        raise ConfigError(f"--resume {str(run_dir)!r}: {CONFIG_NAME} lacks algo/env/hyperparams/run entries")
    return data


def _read_run(run_dir: Path) -> tuple:
    """(config, checkpoint state) of a run directory, or a one-line `ConfigError`."""
    config = load_run_config(run_dir)
    state = torch_load(run_dir / CHECKPOINT, f"checkpoint {str(run_dir / CHECKPOINT)!r}")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ConfigError(f"--resume {str(run_dir)!r}: {CHECKPOINT} is not a format-{_FORMAT} checkpoint of "
                          f"algo {config['algo']!r}")
    return config, state


def _rank_config(config: EnvConfig, ctx) -> EnvConfig:
    # Teacher-training progress bars would repeat rank 0's on every other rank.
    return config if ctx.is_main else config.replace(show_progress=False)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return type(a) is type(b) and a == b


def _loader_overrides(loaders: List[dict]) -> List[dict]:
    """Per rank, the entries of its data-loader state that differ from rank 0's. The permutation
    and position are shared by design; what differs is per-rank randomness such as the
    augmentation generator, so the checkpoint stays small however many ranks there are."""
    return [{k: v for k, v in loader.items() if not _same(v, loaders[0].get(k))} for loader in loaders]


def _rank_agent_state(state: dict, rank: int, world_size: int) -> dict:
    """The checkpoint's agent state (rank 0's env episode) with this rank's data-loader state."""
    info = state.get("dist", {"world_size": 1, "loader_overrides": [{}]})
    if int(info["world_size"]) != world_size or len(info["loader_overrides"]) != world_size:
        raise ConfigError(f"checkpoint: written with world size {info['world_size']}, this launch has world size "
                          f"{world_size}")
    agent = dict(state["agent"])
    override = info["loader_overrides"][rank]
    if override:
        env, engine = dict(agent["env"]), dict(agent["env"]["engine"])
        engine["loader"] = {**engine["loader"], **override}
        env["engine"], agent["env"] = engine, env
    return agent


def _unique_dir(base: Path) -> Path:
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}_{i}"), i + 1
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


# --- the callback --------------------------------------------------------------------------------
class RunCallback(BaseCallback):
    """Logs every step and episode, drives the progress bar and checkpoints at safe points."""

    def __init__(self, run: "Run") -> None:
        super().__init__()
        self.run = run
        self.episodes = 0
        self.ep_return = 0.0
        self.ep_steps = 0
        self.ep_weight_logit: Optional[np.ndarray] = None
        self.ep_weight_feat: Optional[np.ndarray] = None
        self.last_test_acc = float("nan")
        self.bar = None

    def state_dict(self) -> dict:
        t = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731
        return {"episodes": self.episodes, "ep_return": self.ep_return, "ep_steps": self.ep_steps,
                "ep_weight_logit": t(self.ep_weight_logit), "ep_weight_feat": t(self.ep_weight_feat),
                "last_test_acc": self.last_test_acc}

    def load_state_dict(self, state: dict) -> None:
        n = lambda a: None if a is None else a.numpy().copy()  # noqa: E731
        self.episodes, self.ep_return, self.ep_steps = int(state["episodes"]), float(state["ep_return"]), int(state["ep_steps"])
        self.ep_weight_logit, self.ep_weight_feat = n(state["ep_weight_logit"]), n(state["ep_weight_feat"])
        self.last_test_acc = float(state["last_test_acc"])

    def _on_training_start(self) -> None:
        if self.run.settings.show_progress and self.run.dist.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.run.settings.total_timesteps, initial=self.model.num_timesteps,
                            desc=self.run.settings.algo, unit="step", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        self.run.safe_point()

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        done = bool(self.locals["dones"][0])
        reward = self.run.agent.raw_reward(self.locals)
        names = self.run.teacher_keys
        w_l = np.asarray(info["weights_logit"], dtype=np.float64).reshape(-1, len(names)).mean(0)
        w_f = np.asarray(info["weights_feat"], dtype=np.float64).reshape(-1, len(names)).mean(0)
        rec = self.logger.record
        for key in ("loss", "kd_loss", "feat_loss", "student_ce", "student_acc", "lr"):
            rec(f"step/{key}", float(info[key]))
        rec("step/reward", reward)
        for name, wl, wf in zip(names, w_l, w_f):
            rec(f"weight/logit/{name}", float(wl))
            if self.run.separate_weights:
                rec(f"weight/feat/{name}", float(wf))
        self.ep_return += reward
        self.ep_steps += 1
        self.ep_weight_logit = w_l if self.ep_weight_logit is None else self.ep_weight_logit + w_l
        self.ep_weight_feat = w_f if self.ep_weight_feat is None else self.ep_weight_feat + w_f
        if done:
            self.episodes += 1
            self.last_test_acc = float(info.get("final_test_acc", float("nan")))
            rec("episode/index", self.episodes)
            rec("episode/return", self.ep_return)
            rec("episode/length", self.ep_steps)
            rec("episode/final_val_acc", float(info.get("final_val_acc", float("nan"))))
            rec("episode/final_test_acc", self.last_test_acc)
            rec("episode/diverged", float(info.get("diverged", False)))
            if "twin_final_test_acc" in info:  # the lockstep AVER twin: the episode's advantage over equal weights
                rec("episode/advantage_val", float(info["final_val_acc"] - info["twin_final_val_acc"]))
                rec("episode/advantage_test", self.last_test_acc - float(info["twin_final_test_acc"]))
            for name, wl, wf in zip(names, self.ep_weight_logit / self.ep_steps, self.ep_weight_feat / self.ep_steps):
                rec(f"episode/weight_logit/{name}", float(wl))
                if self.run.separate_weights:
                    rec(f"episode/weight_feat/{name}", float(wf))
        self.logger.dump(self.model.num_timesteps)
        if self.bar is not None:
            self.bar.update(self.model.num_timesteps - self.bar.n)
            self.bar.set_postfix(ep=self.episodes, acc=f"{info['student_acc']:.3f}", R=f"{self.ep_return:.3f}",
                                 test=f"{self.last_test_acc:.4f}", refresh=False)
        if done:
            self.ep_return, self.ep_steps = 0.0, 0
            self.ep_weight_logit = self.ep_weight_feat = None
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- the run -------------------------------------------------------------------------------------
class Run:
    """Build with `Run.create(...)` (new) or `Run.resume(...)`, then call `train()`."""

    def __init__(self, settings: RunSettings, env_config: EnvConfig, hyperparams: dict, agent: Any,
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

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: RunSettings, env_config: EnvConfig, hyperparams: dict,
               extra_callbacks: Optional[List[BaseCallback]] = None, command: Optional[List[str]] = None) -> "Run":
        """Validate everything and build the agent, then create the run directory.

        Under torch.distributed every rank builds its agent and env (rank 0 first, so missing
        teachers are trained into the cache once); only rank 0 creates the directory, and every
        rank gets its path and config."""
        settings.validate()
        ctx = dist_context()
        spec = get_spec(settings.algo)
        effective = env_config.replace(**spec.env_overrides)
        agent = collective.everywhere(
            ctx, lambda: spec.build(_rank_config(effective, ctx), hyperparams, settings.seed, settings.device),
            rank0_first=True)

        def make_dir() -> tuple:
            name = f"{ENV_ID}__{settings.algo}__{settings.seed}__{int(time.time())}"
            run_dir = _unique_dir(Path(settings.out_dir) / name)
            config = {"run_name": run_dir.name, "env_id": ENV_ID, "algo": settings.algo, "seed": settings.seed,
                      "total_timesteps": settings.total_timesteps, "world_size": ctx.world_size,
                      "env": effective.to_dict(), "env_overrides": dict(spec.env_overrides),
                      "hyperparams": hyperparams, "run": dataclasses.asdict(settings),
                      "versions": tracking.package_versions(), "git": tracking.git_info(),
                      "command": list(command if command is not None else sys.argv),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wandb_run_id": None}
            text = yaml.safe_dump(config, sort_keys=False)  # fails before anything is written
            run_dir.mkdir(parents=True)
            atomic_write_text(run_dir / CONFIG_NAME, text)
            return str(run_dir), config

        run_dir, config = collective.on_rank0(ctx, make_dir)
        return cls(settings, effective, hyperparams, agent, Path(run_dir), config, extra_callbacks)

    @classmethod
    def resume(cls, run_dir: Path, total_timesteps: Optional[int] = None, wandb_mode: Optional[str] = None,
               show_progress: Optional[bool] = None, device: Optional[str] = None,
               extra_callbacks: Optional[List[BaseCallback]] = None) -> "Run":
        """Rebuild a run from its directory and load its checkpoint (nothing is written here).

        Under torch.distributed rank 0 reads the files and sends them to the other ranks (which
        need no access to the run directory); the world size must be the run's."""
        run_dir = Path(run_dir)
        ctx = dist_context()
        config, state = collective.on_rank0(ctx, lambda: _read_run(run_dir))
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
            raise ConfigError(f"--resume {str(run_dir)!r}: {CHECKPOINT} is not a format-{_FORMAT} checkpoint of "
                              f"algo {settings.algo!r}")
        agent = collective.everywhere(
            ctx, lambda: spec.build(_rank_config(env_config, ctx), hyperparams, settings.seed, settings.device),
            rank0_first=True)
        config = dict(config, total_timesteps=settings.total_timesteps, run=dataclasses.asdict(settings))
        run = cls(settings, env_config, hyperparams, agent, run_dir, config, extra_callbacks)
        agent.load_training_state(_rank_agent_state(state, ctx.rank, ctx.world_size))
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
        if resumed and metrics.exists():
            # Rows past the checkpoint were logged after it; the resumed run writes them again.
            rows = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["global_step"] <= self.last_save]
            atomic_write_text(metrics, "".join(r + "\n" for r in rows))
        s = self.settings
        self.wandb_run = tracking.init_wandb(
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
        state = {"format": _FORMAT, "algo": self.settings.algo, "num_timesteps": n,
                 "agent": agent_state, "rng": capture_rng(), "callback": self.callback.state_dict(),
                 "wall_time": self.wall_time + (time.time() - self._t0),
                 "wandb_run_id": self.config.get("wandb_run_id"),
                 "dist": {"world_size": self.dist.world_size,
                          "loader_overrides": _loader_overrides(loaders or [agent_state["env"]["engine"]["loader"]])}}
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
            raise KeyboardInterrupt
        self._received = signum
        if self.stop_signal is None and self.dist.is_main:  # else already stopping on another rank's copy
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next safe point "
                  "(send it again to abort without saving)", file=sys.stderr, flush=True)

    def _install_handlers(self) -> None:
        self._old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def _restore_handlers(self) -> None:
        for sig, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    def train(self) -> Path:
        """Train until `total_timesteps`; returns the run directory (raises `TrainingInterrupted`)."""
        resumed = self._rng_to_restore is not None
        self._start_logging(resumed)
        if resumed:
            restore_rng(self._rng_to_restore)
        remaining = self.settings.total_timesteps - self.agent.num_timesteps
        self._t0 = time.time()
        self._install_handlers()
        try:
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
            raise
        finally:
            self._restore_handlers()
            self.callback.close()
        self.wall_time += time.time() - self._t0
        summary = self._summary()  # under torch.distributed every rank runs the evaluation episodes
        if self.dist.is_main:
            atomic_write_text(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=1))
        self._finish(interrupted=False, summary=summary)
        if self.dist.is_main:
            from .curves import CURVE_NAME, plot_learning_curve

            plot_learning_curve(tracking.read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / CURVE_NAME,
                                title=self.run_dir.name)
        return self.run_dir

    def _finish(self, interrupted: bool, summary: Optional[dict] = None) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.wandb_run is not None:
            if summary is not None:
                self.wandb_run.summary.update(_flatten(summary))
                model = self.run_dir / MODEL_NAME
                if model.exists():  # files in the run's files dir are uploaded with the run
                    shutil.copy2(model, Path(self.wandb_run.dir) / MODEL_NAME)
            self.wandb_run.finish(exit_code=1 if interrupted else 0)
            self.wandb_run = None

    # --- summary -------------------------------------------------------------------------------
    def _final_policy(self):
        """The saved policy; other ranks get rank 0's model file (their run directory may not
        exist), so every rank evaluates the same policy."""
        from .api import load_policy

        path = self.run_dir / MODEL_NAME
        if not self.dist.enabled:
            return load_policy(path)
        blob = collective.broadcast_object(self.dist, path.read_bytes() if self.dist.is_main else None)
        with tempfile.TemporaryDirectory(prefix="mtkd_policy_") as tmp:
            local = Path(tmp) / MODEL_NAME
            local.write_bytes(blob)
            return load_policy(local)

    def _summary(self) -> dict:
        s = self.settings
        names = list(self.agent.env.teacher_names)
        summary = {"run_dir": str(self.run_dir), "algo": s.algo, "env_id": ENV_ID, "seed": s.seed,
                   "num_timesteps": self.agent.num_timesteps, "episodes": self.callback.episodes,
                   "wall_time_s": round(self.wall_time, 1), "teacher_names": names,
                   "last_train_episode_test_acc": self.callback.last_test_acc, "eval": None}
        if s.eval_episodes > 0:
            policy = self._final_policy()
            seeds = eval_seeds(s.seed, s.eval_episodes)
            user_config = self.env_config.replace(show_progress=False)
            trained = evaluate_policy(policy, user_config, seeds)
            # Equal weights through `step_weights` train the student identically in either granularity.
            equal = evaluate_equal(user_config, seeds)
            diff = [a.final_test_acc - b.final_test_acc for a, b in zip(trained, equal)]
            summary["eval"] = {
                "seeds": seeds,
                "policy_test_acc": [r.final_test_acc for r in trained],
                "equal_test_acc": [r.final_test_acc for r in equal],
                "policy_val_acc": [r.final_val_acc for r in trained],
                "equal_val_acc": [r.final_val_acc for r in equal],
                "policy_test_acc_mean_std": mean_std([r.final_test_acc for r in trained]),
                "equal_test_acc_mean_std": mean_std([r.final_test_acc for r in equal]),
                "test_acc_diff_mean_std": mean_std(diff),
                "test_acc_paired": asdict(paired_stats([r.final_test_acc for r in equal],
                                                       [r.final_test_acc for r in trained])),
                "mean_weight_logit": dict(zip(names, np.mean([r.mean_weight_logit for r in trained], 0).tolist())),
                "mean_weight_feat": dict(zip(names, np.mean([r.mean_weight_feat for r in trained], 0).tolist())),
            }
        return summary


def _flatten(d: dict, prefix: str = "summary/") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
            out[f"{prefix}{key}"] = value
    return out


def _test_note(paired: Optional[dict]) -> str:
    if not paired or paired.get("p_ttest") is None:
        return ""
    mde = paired.get("mde")
    return (f"   (paired t-test p = {paired['p_ttest']:.3g}"
            + (f"; minimum detectable effect {mde:.4f} at α 0.05, power 0.8)" if mde is not None else ")"))


def format_summary(summary: dict) -> str:
    """The human-readable end-of-run summary printed by `python -m agents.train`."""
    minutes, seconds = divmod(int(round(summary["wall_time_s"])), 60)
    lines = [f"== {summary['algo']} on {summary['env_id']}: seed {summary['seed']}, {summary['num_timesteps']} steps "
             f"({summary['episodes']} episodes), training wall time {minutes}m{seconds:02d}s =="]
    ev = summary.get("eval")
    if ev is None:
        lines.append(f"last training episode: final test acc {summary['last_train_episode_test_acc']:.4f} "
                     "(no evaluation episodes requested)")
    else:
        n = len(ev["seeds"])
        pm, ps = ev["policy_test_acc_mean_std"]
        em, es = ev["equal_test_acc_mean_std"]
        dm, ds = ev["test_acc_diff_mean_std"]
        lines += [f"final student test accuracy, {n} fresh student(s), seeds {ev['seeds'][0]}..{ev['seeds'][-1]}:",
                  f"  trained policy        {pm:.4f} ± {ps:.4f}",
                  f"  equal weights (AVER)  {em:.4f} ± {es:.4f}",
                  f"  difference (paired)   {dm:+.4f} ± {ds:.4f}{_test_note(ev.get('test_acc_paired'))}",
                  "mean weight per teacher under the trained policy (logit KD / feature KD):"]
        width = max(len(n) for n in ev["mean_weight_logit"])
        for name in ev["mean_weight_logit"]:
            lines.append(f"  {name:<{width}}  {ev['mean_weight_logit'][name]:.3f} / {ev['mean_weight_feat'][name]:.3f}")
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)
