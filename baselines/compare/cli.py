"""The `python -m baselines.compare` command line: one flag per `CompareOptions` field (derived,
not declared again), plus `--env-config`/`--env` for its env, `--backend` and the Ray flags
(`mtkd_env.runtime.executors.ExecutorOptions`) and `--merge` (`MergeFlags`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import field
from typing import Annotated, Any, Dict, List, Optional, Sequence

from pydantic import Field

from mtkd_env.config import add_env_flags, env_config_from
from mtkd_env.runtime.executors import ExecutorOptions
from mtkd_env.runtime.cli import ArgumentParser, given_flags, run_cli, say
from mtkd_env.runtime.options import Cli, add_options, options_from, settings
from mtkd_env.runtime.tracking import default_wandb_mode

from .options import LEADERBOARD_POLICIES, LEADERBOARD_SEEDS, CompareError, CompareOptions, RunsFailed
from .run import run_compare

__all__ = ["MergeFlags", "build_parser", "options_from_args", "main"]

_MERGE_FLAGS = ("merge", "out", "progress")
"""The flags `--merge` takes: everything else comes from the merged folders."""


@settings(label="flag")
class MergeFlags:
    """`--merge`: the mode of `python -m baselines.compare` that merges instead of running."""

    merge: Annotated[List[str], Field(min_length=1), Cli(metavar="DIR", item="folder", help_default="")] = \
        field(default_factory=list)
    """Merge finished shard folders into --out (checks they share settings and teachers) instead of running."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m baselines.compare",
                       description="rank teacher-weighting policies on the same students and seeds")
    add_options(p, CompareOptions)
    add_options(p, ExecutorOptions)
    add_env_flags(p)
    add_options(p, MergeFlags)
    return p


def command_line(argv: Optional[Sequence[str]]) -> str:
    return "python -m baselines.compare " + shlex.join(list(sys.argv[1:] if argv is None else argv))


def options_from_args(argv: Optional[Sequence[str]] = None) -> CompareOptions:
    return _options(vars(build_parser().parse_args(argv)), command_line(argv))


def _options(args: Dict[str, Any], command: str) -> CompareOptions:
    if "wandb" not in args:  # as agents.train: $WANDB_MODE, else online if logged in, else offline
        args = dict(args, wandb=default_wandb_mode())
    if "scenarios" in args:  # the leaderboard's defaults: 20 students, the oracle and MMKD
        args = {"seeds": list(LEADERBOARD_SEEDS), "policies": list(LEADERBOARD_POLICIES), **args}
    return options_from(CompareOptions, args, env_config=env_config_from(args),
                        executor=options_from(ExecutorOptions, args), command=command)


def _merge(parser: argparse.ArgumentParser, args: Dict[str, Any], command: str) -> None:
    from .merge import merge_outputs

    extra = given_flags(parser, args, [k for k in args if k not in _MERGE_FLAGS])
    if extra:
        raise CompareError(f"--merge takes only --out (settings, policies and seeds come from the merged folders); "
                           f"remove {extra[0]}")
    merge_outputs(options_from(MergeFlags, args).merge, args.get("out", CompareOptions.out), command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if "merge" in args:
        _merge(parser, args, command_line(argv))
        return 0
    opts = _options(args, command_line(argv))
    try:
        if opts.scenarios is not None:
            from .leaderboard import run_leaderboard

            run_leaderboard(opts)
        else:
            run_compare(opts)
    except RunsFailed as exc:  # the other runs' rows are kept: not bad input, exit 1
        say(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
