"""`python -m agents.train --algo ppo`: train a teacher-weighting agent on MultiTeacherKD-v0.

With only `--algo` it trains on the embedded default env (digits, three teachers, one of them
trained on corrupted labels) with the shipped hyperparameters, then prints a summary: the final
test accuracy of fresh students under the trained policy vs equal weights (AVER) on the same
seeds, and the mean weight per teacher. Ctrl-C / SIGTERM save a checkpoint; `--resume DIR`
continues it. Exit codes: 0 done, 2 bad input (nothing written), 130/143 interrupted (resumable).

Under `torchrun` (RANK/WORLD_SIZE set) every rank runs this same program with the same seed and
the env spreads each distillation over all ranks; rank 0's agent decides (the env applies its
action on every rank) and only rank 0 prints, logs and writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import List, Optional

from mtkd_env.config import ConfigError

from .collective import launch_rank


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (and exit code 2), like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        if launch_rank() == 0:  # under torchrun every rank parses the same arguments
            print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


_RUN_DEFINING = ("seed", "env_config", "env", "hyperparams", "out", "save_freq", "wandb_project", "wandb_group")


def build_parser() -> argparse.ArgumentParser:
    from .api import ALGOS

    p = _Parser(prog="python -m agents.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", help=f"algorithm: one of {', '.join(ALGOS)}")
    p.add_argument("--total-timesteps", type=int, help="env steps to train (default: the hyperparameters' n_timesteps)")
    p.add_argument("--seed", type=int, help="seed of the agent, the env and the evaluation students (default 0)")
    p.add_argument("--env-config", metavar="FILE", help="YAML/JSON file of EnvConfig fields")
    p.add_argument("--env", nargs="*", metavar="KEY=VALUE", help="EnvConfig overrides, e.g. epochs=5 device=cpu")
    p.add_argument("--hyperparams", metavar="FILE",
                   help="rl-zoo3-style YAML/JSON overriding agents/hyperparams/<algo>.yml (keyed by env id or flat)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="fresh students for the final summary, each under the trained policy and equal weights (default 3)")
    p.add_argument("--out", metavar="DIR", help="parent of the run directory (default runs/)")
    p.add_argument("--wandb", choices=["online", "offline", "disabled"],
                   help="W&B mode (default: $WANDB_MODE, else online if logged in, else offline)")
    p.add_argument("--wandb-project", help="W&B project (default mtkd-rl)")
    p.add_argument("--wandb-group", help="W&B group, e.g. an experiment name")
    p.add_argument("--device", help="torch device of the agent: cpu (default), cuda, cuda:N or auto; "
                                    "the env's device is the EnvConfig field `device`")
    p.add_argument("--save-freq", type=int, help="env steps between checkpoints (default 1000; 0 = only at the end)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def _saved_env_device(run_dir: str) -> str:
    """The env device of the run to resume, to pick the process-group backend before rank 0 has
    read (and validated) the run; "auto" when this rank cannot read it."""
    from .run import load_run_config

    try:
        return str(load_run_config(run_dir)["env"].get("device", "auto"))
    except (ConfigError, AttributeError, KeyError, TypeError):
        return "auto"


def _build_run(args: argparse.Namespace, command: List[str], ctx):
    from . import api, collective
    from .run import Run, load_run_config

    if args.resume:
        saved_algo = collective.on_rank0(ctx, lambda: load_run_config(args.resume)["algo"])
        if args.algo is not None and args.algo != saved_algo:
            raise ConfigError(f"--algo {args.algo} does not match the resumed run's algo {saved_algo!r}")
        run = Run.resume(args.resume, args.total_timesteps, args.wandb, args.progress, args.device)
        if args.eval_episodes is not None:
            run.settings.eval_episodes = args.eval_episodes
        return run
    return api.prepare_run(
        args.algo, env_config=args.env_config_data, seed=args.seed or 0,
        total_timesteps=args.total_timesteps, out_dir=args.out or "runs", wandb_mode=args.wandb,
        wandb_project=args.wandb_project or "mtkd-rl", wandb_group=args.wandb_group,
        hyperparams_file=args.hyperparams, show_progress=args.progress, device=args.device or "cpu",
        save_freq=args.save_freq if args.save_freq is not None else 1000,
        eval_episodes=3 if args.eval_episodes is None else args.eval_episodes, command=command)


def _ignore_signals_once_stopped(run) -> None:
    """torchrun forwards SIGTERM to every rank, but one rank may already have stopped on another
    rank's copy (the ranks agree on a stop at each safe point): that late signal asks for what is
    done, so it must not kill the rank on its way out. Outside a stopped run it acts as usual.
    The run's own handlers replace this one while it trains and restore it afterwards."""
    def handler(signum: int, frame) -> None:
        if run.stop_signal is not None:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from . import collective

    try:
        return _main(args, argv)
    finally:
        collective.leave()


def _main(args: argparse.Namespace, argv: Optional[List[str]]) -> int:
    from mtkd_env.teachers import CheckpointError

    from . import api, collective
    from .run import SUMMARY_NAME, format_summary

    main_rank = launch_rank() == 0
    say = (lambda *a, **k: print(*a, **k)) if main_rank else (lambda *a, **k: None)  # only rank 0 reports
    command = [sys.executable, "-m", "agents.train"] + list(sys.argv[1:] if argv is None else argv)
    try:
        # Checks that need no other rank come first: every rank reaches the same verdict.
        if args.resume:
            given = [f"--{k.replace('_', '-')}" for k in _RUN_DEFINING if getattr(args, k) is not None]
            if given:
                raise ConfigError(f"--resume continues the saved run; {', '.join(given)} cannot change it")
            device = _saved_env_device(args.resume)
        else:
            if args.algo is None:
                raise ConfigError("--algo is required (or --resume DIR)")
            from mtkd_env import EnvConfig
            from mtkd_env.config import load_config_file, parse_overrides

            data = load_config_file(args.env_config) if args.env_config else {}
            data.update(parse_overrides(args.env or []))
            args.env_config_data = data  # the fields the user set: they win over the algo's env_kwargs
            device = EnvConfig.from_dict(data).device
        ctx = collective.join(device)  # before any env exists: the env shards itself over the group
        run = _build_run(args, command, ctx)
    except (ConfigError, CheckpointError, ValueError) as exc:
        say(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    say(f"run directory: {run.run_dir}", file=sys.stderr)
    if ctx.enabled:
        _ignore_signals_once_stopped(run)
    try:
        run_dir = run.train()
    except api.TrainingInterrupted as exc:
        say(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # a second Ctrl-C, or one during the final evaluation
        say(f"aborted; the last checkpoint in {run.run_dir} resumes with: python -m agents.train --resume "
            f"{run.run_dir}", file=sys.stderr)
        return 130
    if main_rank:
        summary = json.loads((run_dir / SUMMARY_NAME).read_text())
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
