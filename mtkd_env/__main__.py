"""`python -m mtkd_env`: one episode with equal weights (AVER) on the embedded default."""

from __future__ import annotations

import sys
from typing import Annotated, Optional, Sequence

from pydantic import Field

from .config import add_env_flags, env_config_from
from .runtime.cli import ArgumentParser, run_cli
from .runtime.options import add_options, options_from, settings


@settings(label="flag")
class EpisodeOptions:
    """The knobs of `python -m mtkd_env` (besides the env's: `--env-config`, `--env`)."""

    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the episode: the student's initialisation, data order and augmentation."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = ArgumentParser(prog="python -m mtkd_env", description=__doc__)
    add_env_flags(parser)
    add_options(parser, EpisodeOptions)
    args = vars(parser.parse_args(argv))
    opts = options_from(EpisodeOptions, args)
    cfg = env_config_from(args)

    from tqdm.auto import tqdm

    from .env import MultiTeacherKDEnv
    from .runtime import collective
    from .episodes import EqualWeights, run_episode

    ctx = collective.join(cfg.device)  # under torchrun: one distillation over all ranks
    env = MultiTeacherKDEnv(cfg)
    say = print if ctx.is_main else (lambda *a, **k: None)  # only rank 0 reports
    say("teachers (val acc): " + ", ".join(f"{n} {a:.3f}" for n, a in zip(env.teacher_names, env.teacher_val_acc)))
    with tqdm(total=env.total_steps, desc="AVER episode", disable=not (ctx.is_main and cfg.show_progress)) as bar:
        def progress(info: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['student_acc']:.3f}")

        result = run_episode(env, EqualWeights(), opts.seed, on_step=progress)
    say(f"steps {result.steps}  return {result.episode_return:.4f}  final val acc {result.val_acc:.4f}  "
        f"final test acc {result.test_acc:.4f}  (world size {ctx.world_size}, device {env.engine.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
