"""One (policy, seed) evaluation run: the job `baselines.compare` hands its executor (worker
processes or Ray tasks, `mtkd_env.runtime.executors`). It builds (and caches per process) the env
and the policy of the run and logs it to W&B."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from mtkd_env.episodes import EpisodeResult, run_episodes
from mtkd_env.runtime.errors import UserError, first_line
from mtkd_env.runtime.tracking import start_wandb

from ..policies import make_policy
from .options import CompareError

__all__ = ["EvalTask", "run_task", "env_for", "build_env", "WandbRun"]


@dataclass
class EvalTask:
    """Everything a worker needs for one (policy, seed) run; picklable."""

    policy: str
    seed: int
    env_config: Any                       # mtkd_env.EnvConfig (user config, before overrides)
    eval_every: int = 10
    policy_options: Dict[str, Any] = field(default_factory=dict)
    agent_path: Optional[str] = None      # RL policies: a run directory or model file
    agent_seed: Optional[int] = None
    wandb_mode: str = "disabled"
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    wandb_dir: Optional[str] = None


_ENVS: Dict[str, Any] = {}
_AGENTS: Dict[str, Any] = {}


def env_for(config) -> Any:
    """An env for `config`, reused across runs of this process (reset(seed) re-creates the student,
    optimiser and data order, so reuse cannot leak state between runs)."""
    import json

    from mtkd_env.env import MultiTeacherKDEnv

    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key not in _ENVS:
        _ENVS[key] = MultiTeacherKDEnv(config)
    return _ENVS[key]


def build_env(config):
    """The env of `config`; bad input (missing data or teachers, bad options) is a `CompareError`."""
    try:
        return env_for(config)
    except UserError as exc:
        raise CompareError(f"cannot build the env: {first_line(exc)}") from None


def _load_agent(path: str):
    if path not in _AGENTS:
        from agents import api

        _AGENTS[path] = api.load_policy(path)
    return _AGENTS[path]


def run_task(task: EvalTask) -> Dict[str, Any]:
    """Run one task; returns its policy, seed, agent_seed, teacher_names and result (as a dict)."""
    if task.agent_path is not None:
        policy = _load_agent(task.agent_path)
    else:
        policy = make_policy(task.policy, seed=task.seed, **task.policy_options)
    config = task.env_config.replace(**policy.env_overrides) if policy.env_overrides else task.env_config
    env = env_for(config)
    with WandbRun(task, config, env) as run:
        result = run_episodes(policy, config, [task.seed], env=env, eval_every=task.eval_every, log=run.log)[0]
        run.finish(result)
    return {"policy": task.policy, "seed": task.seed, "agent_seed": task.agent_seed,
            "result": asdict(result), "teacher_names": list(env.teacher_names)}


class WandbRun:
    """One W&B run per (policy, seed), grouped so the UI compares policies; a no-op (wandb is not
    even imported) when the mode is "disabled"."""

    def __init__(self, task: EvalTask, config, env) -> None:
        self.run = None
        if task.wandb_mode == "disabled":
            return
        scenario = config.scenario
        self.run = start_wandb(
            task.wandb_mode, project=task.wandb_project, group=task.wandb_group, job_type="eval",
            name=f"{scenario + '__' if scenario else ''}{task.policy}__seed{task.seed}",
            tags=[task.policy] + ([scenario] if scenario else []), run_dir=Path(task.wandb_dir or "."),
            reinit="create_new", step_metric="env_step", announce=False,
            config={"policy": task.policy, "seed": task.seed, "agent_seed": task.agent_seed,
                    "agent_path": task.agent_path, "policy_options": task.policy_options,
                    "eval_every": task.eval_every, "teacher_names": list(env.teacher_names),
                    "teacher_val_acc": [float(a) for a in env.teacher_val_acc], "env": config.to_dict()})

    def log(self, metrics: Dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "env_step": step})

    def finish(self, result: EpisodeResult) -> None:
        if self.run is not None:
            self.run.summary.update({"final_test_acc": result.test_acc, "final_val_acc": result.val_acc,
                                     "steps": result.steps, "diverged": result.diverged,
                                     "steps_per_s": result.steps_per_s})

    def __enter__(self) -> "WandbRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if exc_type else 0)
