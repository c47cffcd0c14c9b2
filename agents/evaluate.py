"""`python -m agents.evaluate --model DIR_OR_ZIP --episodes N`: a trained agent on fresh students.

Runs N episodes (seeds S, S+1, ...) with the deterministic policy on the env config the agent was
trained on (or `--env-config`/`--env` overrides of it) and reports the students' final test and
validation accuracy as mean ± std; `--aver` adds equal weights on the same seeds for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from mtkd_env.config import ConfigError

from .train import _Parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m agents.evaluate", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR_OR_ZIP", help="a run directory or its model.zip")
    p.add_argument("--episodes", type=int, default=5, help="number of fresh students (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--env-config", metavar="FILE", help="YAML/JSON EnvConfig replacing the training one")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="EnvConfig overrides")
    p.add_argument("--aver", action="store_true", help="also run equal weights (AVER) on the same seeds")
    p.add_argument("--json", metavar="FILE", help="also write the per-episode results as JSON")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mtkd_env import EnvConfig
    from mtkd_env.config import load_config_file, parse_overrides
    from mtkd_env.teachers import CheckpointError

    from .api import load_policy
    from .evaluation import evaluate_equal, evaluate_policy, mean_std
    from .modelfile import atomic_write_text

    try:
        if args.episodes < 1:
            raise ConfigError(f"--episodes: expected an integer >= 1, got {args.episodes}")
        policy = load_policy(args.model)
        base = load_config_file(args.env_config) if args.env_config else policy.env_config.to_dict()
        base.update(parse_overrides(args.env))
        config = EnvConfig.from_dict(base).replace(show_progress=False)
        seeds = list(range(args.seed, args.seed + args.episodes))
        results = {"policy": evaluate_policy(policy, config, seeds)}
        if args.aver:
            results["aver"] = evaluate_equal(config, seeds)
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"{policy.algo} from {args.model}: {args.episodes} fresh student(s), seeds {seeds[0]}..{seeds[-1]}")
    for name, rows in results.items():
        tm, ts = mean_std([r.final_test_acc for r in rows])
        vm, vs = mean_std([r.final_val_acc for r in rows])
        label = "trained policy" if name == "policy" else "equal weights (AVER)"
        print(f"  {label:<20}  test acc {tm:.4f} ± {ts:.4f}   val acc {vm:.4f} ± {vs:.4f}")
    if args.json:
        data = {k: [vars(r) for r in v] for k, v in results.items()}
        atomic_write_text(args.json, json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
