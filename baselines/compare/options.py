"""The options of a comparison (`CompareOptions`) and its error types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from mtkd_env.config import EnvConfig
from mtkd_env.runtime.tracking import WANDB_MODES

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "DEFAULT_POLICIES", "REFERENCE", "WANDB_MODES"]

DEFAULT_POLICIES = ("aver", "ca-mkd", "ebkd", "aekd", "best", "random", "no-kd")
REFERENCE = "aver"


class CompareError(ValueError):
    """Bad comparison input (unknown policy, missing agent, an --out made with other settings)."""


class RunsFailed(RuntimeError):
    """Some evaluation runs raised; the others were recorded."""


@dataclass
class CompareOptions:
    """Every knob of a comparison; CLI flags map 1:1 onto these fields."""

    policies: List[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    """Formula policy names (`baselines.POLICIES`) and RL algorithm names (`agents.api.ALGOS`)."""
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Evaluation seeds: `env.reset(seed=s)` for every policy (same students, same data order)."""
    env_config: EnvConfig = field(default_factory=EnvConfig)
    """The env every policy is evaluated on (RL policies add their `env_overrides`)."""
    out: str = "compare_out"
    """Output folder; rerunning with the same folder skips finished rows."""
    jobs: int = 1
    """Parallel worker processes for the evaluation runs (must be 1 under torchrun)."""
    shard: Optional[str] = None
    """"I/N": run only the I-th (1-based) of N contiguous slices of the seed-major job list."""
    eval_every: int = 10
    """Env steps between validation evaluations of the curves (eval mode; no effect on training)."""
    normalization: str = "sum_to_one"
    """EBKD / CA-MKD weights: "sum_to_one" (same KD strength as AVER) or "reference" (the original
    code's effective strength)."""
    aekd_cap: float = 0.6
    """AEKD's per-teacher weight cap C."""
    agent_dir: Optional[str] = None
    """Folder of trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>) instead of training."""
    train_seeds: List[int] = field(default_factory=lambda: [1000])
    """Seeds of RL agent training; evaluation seed s uses the agent of train_seeds[s % len]."""
    train_timesteps: Optional[int] = None
    """RL training budget in env steps (None: the algorithm's default)."""
    train_only: bool = False
    """Train (or reuse) the RL policies' agents into `out` and stop; shards load them with --agent-dir."""
    wandb: str = "disabled"
    """W&B mode: "disabled", "offline" (no network or login needed) or "online"."""
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    """W&B group of every run (default: kept in compare.json, "compare-<UTC time of the first run>")."""
    progress: bool = True
    """Show progress bars."""
    command: str = ""
    """The command line, written into summary.md."""
