"""`python -m agents.train --algo ppo`: train a teacher-weighting agent on MultiTeacherKD-v0.

With only `--algo` it trains on the embedded default env (digits, three teachers, one of them
trained on corrupted labels) with the shipped hyperparameters, then prints a summary: the final
test accuracy of fresh students under the trained policy vs equal weights (AVER) on the same
seeds, and the mean weight per teacher. Ctrl-C / SIGTERM save a checkpoint; `--resume DIR`
continues it. Exit codes: 0 done, 2 bad input (nothing written), 130/143 interrupted (resumable).

`--n-envs K` trains PPO, A2C, SAC or TD3 on K sub-envs (students) at once; `--vec-env` says how
they run: batched (K students trained in this process, the default), subproc or dummy.

Under `torchrun` (RANK/WORLD_SIZE set) every rank runs this same program with the same seed and
the env spreads each distillation over all ranks; rank 0's agent decides (the env applies its
action on every rank) and only rank 0 prints, logs and writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import fields
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence

from mtkd_env.config import ConfigError, EnvConfig, add_env_flags, env_config_data
from mtkd_env.runtime import collective
from mtkd_env.runtime.cli import ArgumentParser, given_flags, run_cli, say
from mtkd_env.runtime.options import Cli, add_options, options_from, settings

from .hyperparams import VEC_ENVS

_RUN_DEFINING = ("seed", "env_config", "env", "hyperparams", "out_dir", "save_freq", "wandb_project", "wandb_group",
                 "n_envs", "vec_env")
"""Flags that define a run: `--resume` continues the saved run, so none of them may be given."""


@settings(label="flag")
class TrainFlags:
    """The `agents.train` flags beyond `RunSettings` and the env flags: the hyperparameters and
    the sub-env layout of a new run, or the run to resume."""

    hyperparams: Annotated[Optional[str], Cli(metavar="FILE", help_default="")] = None
    """rl-zoo3-style YAML/JSON overriding agents/hyperparams/<algo>.yml (keyed by env id or flat)."""
    n_envs: Annotated[Optional[int], Cli(metavar="K", help_default="the hyperparameters' n_envs, else 1")] = None
    """Sub-envs (students) per step for PPO, A2C, SAC, TD3 (hyperparameter n_envs, checked with the
    hyperparameters: at least 1)."""
    vec_env: Annotated[Optional[Literal[VEC_ENVS]], Cli(help_default="the hyperparameters' vec_env, else batched")] = None
    """How K > 1 sub-envs run (hyperparameter vec_env): batched = K students trained in this process,
    subproc = one worker process each, dummy = in turn in this process."""
    resume: Annotated[Optional[str], Cli(metavar="DIR", help_default="")] = None
    """Continue the run in DIR from its checkpoint."""


def build_parser() -> argparse.ArgumentParser:
    from .run import RunSettings

    p = ArgumentParser(prog="python -m agents.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, RunSettings)
    add_env_flags(p)
    add_options(p, TrainFlags)
    return p


def _saved_env_device(run_dir: str) -> str:
    """The env device of the run to resume, to pick the process-group backend before rank 0 has
    read (and validated) the run; "auto" when this rank cannot read it."""
    from .checkpoint import load_run_config

    try:
        return str(load_run_config(run_dir)["env"].get("device", "auto"))
    except (ConfigError, AttributeError, KeyError, TypeError):
        return "auto"


def _build_run(args: Dict[str, Any], env_config, command: List[str], ctx):
    from . import api
    from .checkpoint import load_run_config
    from .run import CLI_EVAL_EPISODES, Run, RunSettings

    if "resume" in args:
        saved_algo = collective.on_rank0(ctx, lambda: load_run_config(args["resume"])["algo"])
        if args.get("algo", saved_algo) != saved_algo:
            raise ConfigError(f"--algo {args['algo']} does not match the resumed run's algo {saved_algo!r}")
        run = Run.resume(args["resume"], args.get("total_timesteps"), args.get("wandb_mode"), args.get("show_progress"),
                         args.get("device"))
        if "eval_episodes" in args:
            run.settings.eval_episodes = args["eval_episodes"]
        return run
    settings = {f.name: args[f.name] for f in fields(RunSettings) if f.name in args and f.name != "algo"}
    settings.setdefault("eval_episodes", CLI_EVAL_EPISODES)  # the CLI's default; the API's is 0
    settings.setdefault("wandb_mode", None)   # None: $WANDB_MODE, else online if logged in, else offline
    layout = {k: args[k] for k in ("n_envs", "vec_env") if k in args}  # hyperparameter overrides
    return api.prepare_run(args["algo"], env_config=env_config, hyperparams_file=args.get("hyperparams"),
                           hyperparams=layout or None, command=command, **settings)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    from . import api
    from .checkpoint import SUMMARY_NAME
    from .interrupts import ignore_late_signals
    from .summary import format_summary

    parser = build_parser()
    args = vars(parser.parse_args(argv))
    options_from(TrainFlags, args)  # the flags' declared checks (argparse has parsed their types and choices)
    command = [sys.executable, "-m", "agents.train"] + list(sys.argv[1:] if argv is None else argv)
    # Checks that need no other rank come first: every rank reaches the same verdict.
    if "resume" in args:
        given = given_flags(parser, args, _RUN_DEFINING)
        if given:
            raise ConfigError(f"--resume continues the saved run; {', '.join(given)} cannot change it")
        env_config, device = None, _saved_env_device(args["resume"])
    else:
        if "algo" not in args:
            raise ConfigError("--algo is required (or --resume DIR)")
        env_config = env_config_data(args)  # the fields the user set: they win over the algo's env_kwargs
        device = EnvConfig.from_dict(env_config).device
    ctx = collective.join(device)  # before any env exists: the env shards itself over the group
    run = _build_run(args, env_config, command, ctx)
    say(f"run directory: {run.run_dir}", file=sys.stderr)
    if ctx.enabled:
        ignore_late_signals(run)
    try:
        run_dir = run.train()
    except api.TrainingInterrupted as exc:
        say(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:  # a second signal (`TrainingAborted`), or a Ctrl-C during the final evaluation
        if run.discarded:
            say(f"aborted before the first checkpoint: nothing to resume; removed the unfinished run directory "
                f"{run.run_dir}", file=sys.stderr)
        else:
            say(f"aborted; the last checkpoint in {run.run_dir} resumes with: python -m agents.train --resume "
                f"{run.run_dir}", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))  # 130 for SIGINT, 143 for SIGTERM
    if ctx.is_main:
        summary = json.loads((run_dir / SUMMARY_NAME).read_text())
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
