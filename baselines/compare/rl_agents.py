"""RL agents of a comparison: loaded from --agent-dir, reused from this --out, or trained."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from mtkd_env.runtime.executors import execute
from mtkd_env.runtime.files import atomic_write_text

from .options import CompareError, CompareOptions

__all__ = ["find_agent", "prepare_agents", "TrainJob", "train_job"]


def find_agent(agent_dir: Path, algo: str, train_seed: int) -> Optional[str]:
    manifest = agent_dir / "agents.json"
    if manifest.is_file():
        entry = json.loads(manifest.read_text()).get(algo, {}).get(str(train_seed))
        if entry and (agent_dir / entry).exists():
            return str(agent_dir / entry)
    for candidate in (agent_dir / algo / f"seed{train_seed}", agent_dir / algo):
        if candidate.exists():
            return str(candidate)
    return None


@dataclass
class TrainJob:
    """One agent to train (picklable: it runs where the comparison's executor puts it)."""

    algo: str
    seed: int
    env_config: Any
    total_timesteps: Optional[int]
    out_dir: str
    wandb_mode: str
    wandb_project: str
    wandb_group: str
    show_progress: bool


def train_job(job: TrainJob) -> str:
    """Train one agent; its run directory."""
    from agents import api

    return str(api.train(job.algo, env_config=job.env_config, seed=job.seed, total_timesteps=job.total_timesteps,
                         out_dir=job.out_dir, wandb_mode=job.wandb_mode, wandb_project=job.wandb_project,
                         wandb_group=job.wandb_group, show_progress=job.show_progress))


def prepare_agents(opts: CompareOptions, rl: List[str], group: str) -> Dict[str, Dict[int, str]]:
    """algo -> train seed -> agent path: loaded from --agent-dir, reused from this --out, or trained.
    The agents to train are jobs of the comparison's executor (`--jobs N` local processes, or one
    Ray task each with `--backend ray`), so the train seeds of a multi-seed comparison train side by side."""
    out = Path(opts.out)
    manifest_path = out / "agents.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    agents: Dict[str, Dict[int, str]] = {}
    jobs: List[TrainJob] = []
    for algo in rl:
        agents[algo] = {}
        for ts in opts.train_seeds:
            if opts.agent_dir is not None:
                path = find_agent(Path(opts.agent_dir), algo, ts)
                if path is None:
                    raise CompareError(f"no trained {algo!r} agent for train seed {ts} in {opts.agent_dir!r}; "
                                       f"expected {opts.agent_dir}/agents.json, {opts.agent_dir}/{algo}/seed{ts} "
                                       f"or {opts.agent_dir}/{algo} (a run directory or model file)")
                agents[algo][ts] = path
            elif str(ts) in manifest.get(algo, {}) and (out / manifest[algo][str(ts)]).exists():
                agents[algo][ts] = str(out / manifest[algo][str(ts)])
            else:
                jobs.append(TrainJob(algo, ts, _training_config(opts.env_config), opts.train_timesteps,
                                     str(out / "agents" / algo / f"seed{ts}"), opts.wandb, opts.wandb_project, group,
                                     opts.progress and opts.jobs == 1 and opts.executor.backend == "local"))
    for job in jobs:
        print(f"training {job.algo} (train seed {job.seed}) ...", file=sys.stderr)
    for job, run_dir, error in execute(train_job, jobs, opts.executor, min(opts.jobs, max(1, len(jobs)))):
        if error is not None:
            raise error
        manifest.setdefault(job.algo, {})[str(job.seed)] = os.path.relpath(Path(run_dir).resolve(), out.resolve())
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))  # each agent as soon as it is there
        agents[job.algo][job.seed] = run_dir
    return agents


def _training_config(config):
    """Agents train on the train instances of an instance set (the comparison evaluates on the test ones)."""
    return config.replace(instance_set="train", instance=None) if config.pool_size is not None else config
