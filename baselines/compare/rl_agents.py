"""RL agents of a comparison: loaded from --agent-dir, reused from this --out, or trained."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from mtkd_env.runtime.files import atomic_write_text

from .options import CompareError, CompareOptions

__all__ = ["find_agent", "prepare_agents"]


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


def prepare_agents(opts: CompareOptions, rl: List[str], group: str) -> Dict[str, Dict[int, str]]:
    """algo -> train seed -> agent path: loaded from --agent-dir, reused from this --out, or trained."""
    out = Path(opts.out)
    manifest_path = out / "agents.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    from agents import api

    agents: Dict[str, Dict[int, str]] = {}
    for algo in rl:
        agents[algo] = {}
        for ts in opts.train_seeds:
            if opts.agent_dir is not None:
                path = find_agent(Path(opts.agent_dir), algo, ts)
                if path is None:
                    raise CompareError(f"no trained {algo!r} agent for train seed {ts} in {opts.agent_dir!r}; "
                                       f"expected {opts.agent_dir}/agents.json, {opts.agent_dir}/{algo}/seed{ts} "
                                       f"or {opts.agent_dir}/{algo} (a run directory or model file)")
            elif str(ts) in manifest.get(algo, {}) and (out / manifest[algo][str(ts)]).exists():
                path = str(out / manifest[algo][str(ts)])
            else:
                print(f"training {algo} (train seed {ts}) ...", file=sys.stderr)
                run_dir = Path(api.train(
                    algo, env_config=_training_config(opts.env_config), seed=ts, total_timesteps=opts.train_timesteps,
                    out_dir=str(out / "agents" / algo / f"seed{ts}"), wandb_mode=opts.wandb,
                    wandb_project=opts.wandb_project, wandb_group=group, show_progress=opts.progress))
                manifest.setdefault(algo, {})[str(ts)] = os.path.relpath(run_dir.resolve(), out.resolve())
                atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
                path = str(run_dir)
            agents[algo][ts] = path
    return agents


def _training_config(config):
    """Agents train on the train instances of an instance set (the comparison evaluates on the test ones)."""
    return config.replace(instance_set="train", instance=None) if config.pool_size is not None else config
