"""The `python -m baselines.compare` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from mtkd_env.config import ConfigError, EnvConfig, load_config_file, parse_overrides
from mtkd_env.teachers import CheckpointError

from ..policies import POLICIES
from ..weights import NORMALIZATIONS
from .options import DEFAULT_POLICIES, WANDB_MODES, CompareError, CompareOptions, RunsFailed
from .run import run_compare

_DESCRIPTION = "rank teacher-weighting policies on the same students and seeds"

__all__ = ["build_parser", "options_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m baselines.compare", description=_DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policies", nargs="+", default=[",".join(DEFAULT_POLICIES)], metavar="NAMES",
                   help=f"comma-separated policy names: formula {sorted(POLICIES)} and RL algorithms of "
                        f"agents.api.ALGOS (e.g. ppo, mtkd-rl)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="evaluation seeds")
    p.add_argument("--env-config", help="YAML/JSON file of EnvConfig fields")
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="EnvConfig overrides, e.g. --env max_steps=50 device=cpu")
    p.add_argument("--out", default="compare_out", help="output folder (rerun to resume)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (1 under torchrun)")
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="run only the I-th (1-based) of N contiguous slices of the seed-major (policy x seed) "
                        "job list, e.g. --shard ${SLURM_ARRAY_TASK_ID}/4; one --out per shard, then --merge")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="merge finished shard folders into --out (checks they share settings and teachers) "
                        "instead of running")
    p.add_argument("--eval-every", type=int, default=10, help="env steps between validation points")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="sum_to_one",
                   help="EBKD/CA-MKD weights: sum to 1, or the original code's effective scale")
    p.add_argument("--aekd-cap", type=float, default=0.6, help="AEKD per-teacher weight cap C")
    p.add_argument("--agent-dir", help="trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>)")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[1000], help="RL agent training seeds")
    p.add_argument("--train-timesteps", type=int, default=None,
                   help="RL training env steps (None: the algorithm's n_timesteps)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or reuse) the RL policies' agents into --out and stop (for --agent-dir)")
    p.add_argument("--wandb", choices=WANDB_MODES, default="disabled", help="W&B mode")
    p.add_argument("--wandb-project", default="mtkd-rl")
    p.add_argument("--wandb-group", default=None,
                   help="W&B group (None: the one stored in OUT/compare.json)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


_MERGE_FLAGS = ("merge", "out", "no_progress")
"""The flags `--merge` takes: everything else comes from the merged folders."""


def command_line(argv: Optional[Sequence[str]]) -> str:
    return "python -m baselines.compare " + shlex.join(list(sys.argv[1:] if argv is None else argv))


def options_from_args(argv: Optional[Sequence[str]] = None) -> CompareOptions:
    return options_from_namespace(build_parser().parse_args(argv), command_line(argv))


def options_from_namespace(args: argparse.Namespace, command: str) -> CompareOptions:
    data = load_config_file(args.env_config) if args.env_config else {}
    data.update(parse_overrides(args.env))
    policies = [n.strip() for chunk in args.policies for n in chunk.split(",") if n.strip()]
    return CompareOptions(
        policies=policies, seeds=args.seeds, env_config=EnvConfig.from_dict(data), out=args.out, jobs=args.jobs,
        shard=args.shard, eval_every=args.eval_every, normalization=args.normalization, aekd_cap=args.aekd_cap,
        agent_dir=args.agent_dir, train_seeds=args.train_seeds, train_timesteps=args.train_timesteps,
        train_only=args.train_only, wandb=args.wandb, wandb_project=args.wandb_project,
        wandb_group=args.wandb_group, progress=not args.no_progress, command=command)


def merge_from_args(args: argparse.Namespace, command: str) -> None:
    from .merge import merge_outputs

    defaults = vars(build_parser().parse_args([]))
    extra = [k for k, v in vars(args).items() if k not in _MERGE_FLAGS and v != defaults[k]]
    if extra:
        raise CompareError(f"--merge takes only --out (settings, policies and seeds come from the merged folders); "
                           f"remove --{extra[0].replace('_', '-')}")
    merge_outputs(args.merge, args.out, command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Under torchrun only rank 0 reports; the other ranks exit with the same status.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        args = build_parser().parse_args(argv)
        if args.merge is not None:
            merge_from_args(args, command_line(argv))
        else:
            run_compare(options_from_namespace(args, command_line(argv)))
    except (ConfigError, CompareError, CheckpointError) as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunsFailed as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        from mtkd_env.distributed import leave

        leave()
    return 0
