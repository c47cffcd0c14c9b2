"""The options of a comparison (`CompareOptions`) and its error types.

Every knob is declared once, here: its field gives the type, default, bounds, choices and help
text; `baselines.compare.cli` derives the command line from it (`mtkd_env.runtime.options`).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, List, Literal, Optional

from pydantic import Field

from mtkd_env.config import ConfigError, EnvConfig
from mtkd_env.runtime.executors import ExecutorOptions
from mtkd_env.runtime.options import Cli, settings
from mtkd_env.runtime.tracking import WANDB_MODES

from ..weights import NORMALIZATIONS

DEFAULT_ORACLE_SEEDS = (2000, 2001)
"""`baselines.oracle.SEARCH_SEEDS` (not imported: the oracle module drives compare's worker)."""

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "DEFAULT_POLICIES", "LEADERBOARD_POLICIES", "LEADERBOARD_SEEDS", "REFERENCE", "WANDB_MODES"]

DEFAULT_POLICIES = ("aver", "ca-mkd", "ebkd", "aekd", "best", "random", "no-kd")
LEADERBOARD_POLICIES = DEFAULT_POLICIES + ("mmkd", "best-constant", "oracle")
LEADERBOARD_SEEDS = tuple(range(20))
REFERENCE = "aver"


class CompareError(ConfigError):
    """Bad comparison input (unknown policy, missing agent, an --out made with other settings)."""


class RunsFailed(RuntimeError):
    """Some evaluation runs raised; the others were recorded."""


@settings(label="flag")
class CompareOptions:
    """Every knob of a comparison; CLI flags map 1:1 onto these fields (errors name the flag)."""

    policies: Annotated[List[str], Field(min_length=1), Cli(split=True, item="policy name", metavar="NAMES")] = field(
        default_factory=lambda: list(DEFAULT_POLICIES))
    """Policy names, comma- or space-separated (repeated flags add up): formula policies
    (`baselines.POLICIES`) and RL algorithms (`agents.api.ALGOS`, e.g. ppo, mtkd-rl)."""
    seeds: Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1), Cli(item='evaluation seed')] = field(default_factory=lambda: list(range(10)))
    """Evaluation seeds: `env.reset(seed=s)` for every policy (same students, same data order);
    with --scenarios the default is 0..19."""
    scenarios: Annotated[Optional[List[str]], Cli(split=True, item="scenario name", metavar="NAMES")] = None
    """The leaderboard: run the comparison on each of these scenarios (`mtkd_env.scenarios`; "all" = every
    classification one; name seg_unreliable / det_unreliable explicitly) into OUT/<scenario>/ and rank the policies across them (`baselines.compare.leaderboard`). Its
    default policies add "mmkd", "best-constant" and "oracle" to the formula defaults."""
    env_config: Annotated[EnvConfig, Cli(hidden=True)] = field(default_factory=EnvConfig)
    """The env every policy is evaluated on (RL policies add their `env_overrides`)."""
    out: Annotated[str, Cli(metavar='DIR')] = 'compare_out'
    """Output folder; rerunning with the same folder skips finished rows."""
    jobs: Annotated[int, Field(ge=1)] = 1
    """Parallel worker processes for the evaluation runs (must be 1 under torchrun and with --backend ray)."""
    executor: Annotated[ExecutorOptions, Cli(hidden=True)] = field(default_factory=ExecutorOptions)
    """Where the evaluation runs go: this machine, or a Ray cluster (`--backend`, `--address`, ...)."""
    shard: Annotated[Optional[str], Cli(metavar='I/N')] = None
    """"I/N": run only the I-th (1-based) of N contiguous slices of the seed-major (policy x seed) job
    list, e.g. --shard ${SLURM_ARRAY_TASK_ID}/4; one --out per shard, then --merge."""
    eval_every: Annotated[int, Field(ge=1)] = 10
    """Env steps between validation evaluations of the curves (eval mode; no effect on training)."""
    normalization: Literal[NORMALIZATIONS] = 'sum_to_one'
    """EBKD / CA-MKD weights: "sum_to_one" (same KD strength as AVER) or "reference" (the original
    code's effective strength)."""
    aekd_cap: Annotated[float, Field(gt=0)] = 0.6
    """AEKD's per-teacher weight cap C."""
    agent_dir: Annotated[Optional[str], Cli(metavar='DIR')] = None
    """Folder of trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>) instead of training."""
    train_seeds: Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1), Cli(item='seed')] = field(default_factory=lambda: [1000])
    """Seeds of RL agent training; evaluation seed s uses the agent of train_seeds[s % len]."""
    train_timesteps: Optional[Annotated[int, Field(ge=1)]] = None
    """RL training budget in env steps (None: the algorithm's default)."""
    oracle_seeds: Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1), Cli(item='seed')] = field(
        default_factory=lambda: list(DEFAULT_ORACLE_SEEDS))
    """Search seeds of the oracle and best-constant policies (`python -m baselines.oracle --seeds`; the
    cached search of these seeds is used, or run); keep them disjoint from the evaluation seeds."""
    train_only: bool = False
    """Train (or reuse) the RL policies' agents into `out` and stop; shards load them with --agent-dir."""
    wandb: Annotated[Literal[WANDB_MODES], Cli(help_default="$WANDB_MODE, else online if logged in, "
                                                             "else offline")] = "disabled"
    """W&B mode: "disabled", "offline" (no network or login needed) or "online"."""
    wandb_project: str = "mtkd-rl"
    """W&B project."""
    wandb_group: Optional[str] = None
    """W&B group of every run (default: kept in compare.json, "compare-<UTC time of the first run>")."""
    progress: bool = True
    """Show progress bars."""
    command: Annotated[str, Cli(hidden=True)] = ''
    """The command line, written into summary.md."""

    def __post_init__(self) -> None:
        if self.scenarios is not None:
            from mtkd_env.scenarios import SCENARIOS, get_scenario, suite

            names = suite() if self.scenarios == ["all"] else list(dict.fromkeys(self.scenarios))
            for name in names:
                if name not in SCENARIOS:
                    get_scenario(name)  # the one-line error with "did you mean"
            self.scenarios = names
        self.policies = list(dict.fromkeys(self.policies))
        self.seeds = list(dict.fromkeys(self.seeds))
