"""How much of a paired comparison's sd is the test split, and how much the students.

    python -m benchmarks.split_noise --scenario unreliable --seeds 0 1 2 [--json FILE]

For each seed, AVER's and the oracle's student (`baselines.oracle`, searched or read from its
cache) train from the same initialisation and data order; their predictions on the test split give
the fractions p10 / p01 of images that only the oracle's / only AVER's student gets right. The
sampling sd of their accuracy difference from the split alone is sqrt((p10 + p01 - (p10 - p01)^2) / n)
(n test images): the part of the paired sd that a larger test split would remove. The rest of the
paired sd over seeds is the students' own spread.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from mtkd_env.config import EnvConfig, add_env_flags, env_config_data
from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import DEFAULT_SCENARIO

__all__ = ["split_noise", "main"]


def split_noise(config: EnvConfig, seeds: Sequence[int]) -> dict:
    """Per seed: the paired test difference (oracle - AVER), the disagreement p10 + p01 and the
    split's sd; and their summary (see the module docstring)."""
    from baselines.compare.worker import env_for
    from baselines.oracle import load_or_search
    from baselines.policies import make_policy
    from mtkd_env.episodes import run_episode

    choice = load_or_search(config, progress=False)["choice"]
    rows = []
    for seed in seeds:
        right = {}
        for name in ("aver", "oracle"):
            policy = make_policy(name, choice=choice) if name == "oracle" else make_policy(name)
            cfg = config.replace(**policy.env_overrides)
            env = env_for(cfg)  # one env per config for all seeds: reset(seed) makes a fresh student
            run_episode(env, policy, int(seed))
            engine = env.engine
            with torch.no_grad():
                pred = torch.cat([engine.student.eval()(x).logits.argmax(1)
                                  for x, _ in engine.test_set.batches(cfg.eval_batch_size)])
            right[name] = (pred == engine.test_y).cpu().numpy()
        a, o = right["aver"], right["oracle"]
        p10, p01, n = float((o & ~a).mean()), float((a & ~o).mean()), len(a)
        rows.append({"seed": int(seed), "diff_pp": 100 * float(o.mean() - a.mean()), "disagreement": p10 + p01,
                     "split_sd_pp": 100 * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)})
    diffs = [r["diff_pp"] for r in rows]
    return {"scenario": config.scenario, "n_test": n, "rows": rows,
            "split_sd_pp": float(np.mean([r["split_sd_pp"] for r in rows])),
            "paired_sd_pp": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None}


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.split_noise",
                            description="the test split's part of a paired comparison's sd")
    parser.add_argument("--scenario", default=DEFAULT_SCENARIO, help=f"scenario (default: {DEFAULT_SCENARIO})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED",
                        help="evaluation seeds (default: 0 1 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    add_env_flags(parser)
    args = vars(parser.parse_args(argv))
    config = EnvConfig.from_dict({**env_config_data(args), "scenario": args["scenario"], "show_progress": False})
    figures = split_noise(config, args["seeds"])
    for r in figures["rows"]:
        print(f"seed {r['seed']}: oracle - AVER {r['diff_pp']:+.2f} pp, disagreement {100 * r['disagreement']:.1f} %, "
              f"split sd {r['split_sd_pp']:.2f} pp")
    print(f"split sd (n_test {figures['n_test']}): {figures['split_sd_pp']:.2f} pp; paired sd over these seeds: "
          + ("–" if figures["paired_sd_pp"] is None else f"{figures['paired_sd_pp']:.2f} pp"))
    if args.get("json"):
        atomic_write_text(args["json"], json.dumps(figures, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
