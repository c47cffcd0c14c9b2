"""The options of a comparison (`CompareOptions`) and its error types.

Every knob is declared once, here: its field gives the type, default, bounds, choices and help
text; `baselines.compare.cli` derives the command line from it (`mtkd_env.runtime.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from mtkd_env.config import ConfigError, EnvConfig
from mtkd_env.runtime.options import check_options, knob
from mtkd_env.runtime.tracking import WANDB_MODES

from ..weights import NORMALIZATIONS

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "DEFAULT_POLICIES", "REFERENCE", "WANDB_MODES"]

DEFAULT_POLICIES = ("aver", "ca-mkd", "ebkd", "aekd", "best", "random", "no-kd")
REFERENCE = "aver"


class CompareError(ConfigError):
    """Bad comparison input (unknown policy, missing agent, an --out made with other settings)."""


class RunsFailed(RuntimeError):
    """Some evaluation runs raised; the others were recorded."""


@dataclass
class CompareOptions:
    """Every knob of a comparison; CLI flags map 1:1 onto these fields (errors name the flag)."""

    policies: List[str] = knob(default_factory=lambda: list(DEFAULT_POLICIES), split=True, nonempty="policy name",
                               metavar="NAMES")
    """Policy names, comma- or space-separated (repeated flags add up): formula policies
    (`baselines.POLICIES`) and RL algorithms (`agents.api.ALGOS`, e.g. ppo, mtkd-rl)."""
    seeds: List[int] = knob(default_factory=lambda: list(range(10)), minimum=0, nonempty="evaluation seed")
    """Evaluation seeds: `env.reset(seed=s)` for every policy (same students, same data order)."""
    env_config: EnvConfig = knob(default_factory=EnvConfig, cli=False)
    """The env every policy is evaluated on (RL policies add their `env_overrides`)."""
    out: str = knob("compare_out", metavar="DIR")
    """Output folder; rerunning with the same folder skips finished rows."""
    jobs: int = knob(1, minimum=1)
    """Parallel worker processes for the evaluation runs (must be 1 under torchrun)."""
    shard: Optional[str] = knob(None, metavar="I/N")
    """"I/N": run only the I-th (1-based) of N contiguous slices of the seed-major (policy x seed) job
    list, e.g. --shard ${SLURM_ARRAY_TASK_ID}/4; one --out per shard, then --merge."""
    eval_every: int = knob(10, minimum=1)
    """Env steps between validation evaluations of the curves (eval mode; no effect on training)."""
    normalization: str = knob("sum_to_one", choices=NORMALIZATIONS)
    """EBKD / CA-MKD weights: "sum_to_one" (same KD strength as AVER) or "reference" (the original
    code's effective strength)."""
    aekd_cap: float = knob(0.6, above=0)
    """AEKD's per-teacher weight cap C."""
    agent_dir: Optional[str] = knob(None, metavar="DIR")
    """Folder of trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>) instead of training."""
    train_seeds: List[int] = knob(default_factory=lambda: [1000], minimum=0, nonempty="seed")
    """Seeds of RL agent training; evaluation seed s uses the agent of train_seeds[s % len]."""
    train_timesteps: Optional[int] = knob(None, minimum=1)
    """RL training budget in env steps (None: the algorithm's default)."""
    train_only: bool = False
    """Train (or reuse) the RL policies' agents into `out` and stop; shards load them with --agent-dir."""
    wandb: str = knob("disabled", choices=WANDB_MODES,
                      cli_help_default="$WANDB_MODE, else online if logged in, else offline")
    """W&B mode: "disabled", "offline" (no network or login needed) or "online"."""
    wandb_project: str = "mtkd-rl"
    """W&B project."""
    wandb_group: Optional[str] = None
    """W&B group of every run (default: kept in compare.json, "compare-<UTC time of the first run>")."""
    progress: bool = True
    """Show progress bars."""
    command: str = knob("", cli=False)
    """The command line, written into summary.md."""

    def __post_init__(self) -> None:
        check_options(self, label="flag")
        self.policies = list(dict.fromkeys(self.policies))
        self.seeds = list(dict.fromkeys(self.seeds))
