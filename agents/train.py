"""`python -m agents.train --algo ppo`: train a teacher-weighting agent on MultiTeacherKD-v0.

With only `--algo` it trains on the embedded default env (digits, three teachers, one of them
trained on corrupted labels) with the shipped hyperparameters, then prints a summary: the final
test accuracy of fresh students under the trained policy vs equal weights (AVER) on the same
seeds, and the mean weight per teacher. Ctrl-C / SIGTERM save a checkpoint; `--resume DIR`
continues it. Exit codes: 0 done, 2 bad input (nothing written), 130/143 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from mtkd_env.config import ConfigError


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (and exit code 2), like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mtkd_env.teachers import CheckpointError

    from . import api
    from .run import SUMMARY_NAME, format_summary, load_run_config

    command = [sys.executable, "-m", "agents.train"] + list(sys.argv[1:] if argv is None else argv)
    try:
        if args.resume:
            given = [f"--{k.replace('_', '-')}" for k in _RUN_DEFINING if getattr(args, k) is not None]
            if given:
                raise ConfigError(f"--resume continues the saved run; {', '.join(given)} cannot change it")
            saved_algo = load_run_config(args.resume)["algo"]
            if args.algo is not None and args.algo != saved_algo:
                raise ConfigError(f"--algo {args.algo} does not match the resumed run's algo {saved_algo!r}")
            from .run import Run

            run = Run.resume(args.resume, args.total_timesteps, args.wandb, args.progress, args.device)
            if args.eval_episodes is not None:
                run.settings.eval_episodes = args.eval_episodes
        else:
            if args.algo is None:
                raise ConfigError("--algo is required (or --resume DIR)")
            from mtkd_env import EnvConfig
            from mtkd_env.config import load_config_file, parse_overrides

            data = load_config_file(args.env_config) if args.env_config else {}
            data.update(parse_overrides(args.env or []))
            run = api.prepare_run(
                args.algo, env_config=EnvConfig.from_dict(data), seed=args.seed or 0,
                total_timesteps=args.total_timesteps, out_dir=args.out or "runs", wandb_mode=args.wandb,
                wandb_project=args.wandb_project or "mtkd-rl", wandb_group=args.wandb_group,
                hyperparams_file=args.hyperparams, show_progress=args.progress, device=args.device or "cpu",
                save_freq=args.save_freq if args.save_freq is not None else 1000,
                eval_episodes=3 if args.eval_episodes is None else args.eval_episodes, command=command)
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"run directory: {run.run_dir}", file=sys.stderr)
    try:
        run_dir = run.train()
    except api.TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # a second Ctrl-C, or one during the final evaluation
        print(f"aborted; the last checkpoint in {run.run_dir} resumes with: python -m agents.train --resume "
              f"{run.run_dir}", file=sys.stderr)
        return 130
    summary = json.loads((run_dir / SUMMARY_NAME).read_text())
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
