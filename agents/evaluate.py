"""`python -m agents.evaluate --model DIR_OR_ZIP --episodes N`: a trained agent on fresh students.

Runs N episodes (seeds S, S+1, ...) with the deterministic policy on the env config the agent was
trained on (or `--env-config`/`--env` overrides of it) and reports the students' final test and
validation accuracy as mean ± std; `--aver` adds equal weights on the same seeds for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Annotated, Optional, Sequence

from pydantic import Field

from mtkd_env.config import add_env_flags, env_config_from
from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.options import Cli, add_options, options_from, settings


@settings(label="flag")
class EvaluateOptions:
    """The knobs of `python -m agents.evaluate` (besides the env's: `--env-config`, `--env`)."""

    model: Annotated[str, Cli(metavar='DIR_OR_ZIP')]
    """A run directory or its model.zip."""
    episodes: Annotated[int, Field(ge=1)] = 5
    """Number of fresh students."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the first episode (the others use the next seeds)."""
    aver: bool = False
    """Also run equal weights (AVER) on the same seeds."""
    json: Annotated[Optional[str], Cli(metavar='FILE')] = None
    """Also write the per-episode results as JSON."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m agents.evaluate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, EvaluateOptions)
    add_env_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    from mtkd_env.runtime.files import atomic_write_text, check_output_file

    from .api import load_policy
    from .evaluation import evaluate_equal, evaluate_policy, mean_std

    args = vars(build_parser().parse_args(argv))
    opts = options_from(EvaluateOptions, args)
    if opts.json is not None:
        check_output_file(opts.json, "--json")  # before the episodes, not after them
    policy = load_policy(opts.model)
    config = env_config_from(args, base=policy.env_config.to_dict()).replace(show_progress=False)
    seeds = list(range(opts.seed, opts.seed + opts.episodes))
    results = {"policy": evaluate_policy(policy, config, seeds)}
    if opts.aver:
        results["aver"] = evaluate_equal(config, seeds)
    print(f"{policy.algo} from {opts.model}: {opts.episodes} fresh student(s), seeds {seeds[0]}..{seeds[-1]}")
    for name, rows in results.items():
        tm, ts = mean_std([r.test_acc for r in rows])
        vm, vs = mean_std([r.val_acc for r in rows])
        label = "trained policy" if name == "policy" else "equal weights (AVER)"
        print(f"  {label:<20}  test acc {tm:.4f} ± {ts:.4f}   val acc {vm:.4f} ± {vs:.4f}")
    if opts.aver:
        from mtkd_env.stats import paired_stats

        st = paired_stats([r.test_acc for r in results["aver"]], [r.test_acc for r in results["policy"]])
        note = "" if st.p_ttest is None else f", paired t-test p = {st.p_ttest:.3g}"
        mde = "" if st.mde is None else f", minimum detectable effect {st.mde:.4f} (α 0.05, power 0.8)"
        print(f"  difference (paired)   test acc {st.mean:+.4f} ± {st.sd:.4f}{note}{mde}")
    if opts.json is not None:
        data = {k: [dataclasses.asdict(r) for r in v] for k, v in results.items()}
        atomic_write_text(opts.json, json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
