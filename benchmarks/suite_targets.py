"""The scenario suite's targets, measured from a leaderboard folder (`baselines.compare --scenarios`).

    python -m benchmarks.suite_targets --out LEADERBOARD_DIR [--seeds 0..19] [--json FILE]

Reads each scenario's `results.csv` and prints, from the same students (paired by seed):

- noise floor: the paired sd of (oracle - AVER) test accuracy on the default scenario
  (`mtkd_env.scenarios.DEFAULT_SCENARIO`); target <= 0.3 pp;
- per scenario: oracle - AVER with its MDE (alpha 0.05, power 0.8) and p; target >= 3 x MDE and
  p < 0.001;
- `specialists`: oracle (per-sample routing) - best-constant; target >= 3 pp;
- `schedule`: oracle (best schedule) - best-constant, paired p; target p < 0.01.

Only seeds where both policies have a row count (`--seeds` restricts them further).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import DEFAULT_SCENARIO, SCENARIOS
from mtkd_env.stats import paired_stats

__all__ = ["targets", "accuracies", "pair", "main"]


def accuracies(folder: Path, seeds: Optional[Sequence[int]]) -> Dict[str, Dict[int, float]]:
    out: Dict[str, Dict[int, float]] = {}
    with (folder / "results.csv").open() as fh:
        for row in csv.DictReader(fh):
            seed = int(row["seed"])
            if seeds is None or seed in seeds:
                out.setdefault(row["policy"], {})[seed] = float(row["test_acc"])
    return out


def pair(acc: Dict[str, Dict[int, float]], base: str, other: str) -> Optional[dict]:
    if base not in acc or other not in acc:
        return None
    seeds = sorted(set(acc[base]) & set(acc[other]))
    st = paired_stats([acc[base][s] for s in seeds], [acc[other][s] for s in seeds])
    pp = lambda v: None if v is None else 100 * v  # noqa: E731
    return {"n": st.n, "delta_pp": pp(st.mean), "sd_pp": pp(st.sd), "mde_pp": pp(st.mde), "p": st.p_ttest}


def targets(out: Path, seeds: Optional[Sequence[int]] = None) -> dict:
    """Every target's figures from the leaderboard folder `out` (see the module docstring)."""
    found = [name for name in SCENARIOS if (out / name / "results.csv").is_file()]
    if not found:
        raise ConfigError(f"--out: {str(out)!r} holds no scenario results (expected <scenario>/results.csv from "
                          f"python -m baselines.compare --scenarios ...)")
    figures: dict = {"scenarios": {}}
    for name in found:
        acc = accuracies(out / name, seeds)
        row = {"oracle_vs_aver": pair(acc, "aver", "oracle"),
               "oracle_vs_best_constant": pair(acc, "best-constant", "oracle")}
        o = row["oracle_vs_aver"]
        if o is not None and o["mde_pp"] is not None:
            row["ratio_to_mde"] = o["delta_pp"] / o["mde_pp"]
            row["meets_3x_mde_and_p"] = bool(o["delta_pp"] >= 3 * o["mde_pp"] and o["p"] is not None and o["p"] < 1e-3)
        figures["scenarios"][name] = row
    default = figures["scenarios"].get(DEFAULT_SCENARIO, {}).get("oracle_vs_aver")
    if default is not None:
        figures["noise_floor_sd_pp"] = default["sd_pp"]
        figures["noise_floor_met"] = bool(default["sd_pp"] is not None and default["sd_pp"] <= 0.3)
    spec = figures["scenarios"].get("specialists", {}).get("oracle_vs_best_constant")
    if spec is not None:
        figures["specialists_met"] = bool(spec["delta_pp"] >= 3.0)
    sched = figures["scenarios"].get("schedule", {}).get("oracle_vs_best_constant")
    if sched is not None:
        figures["schedule_met"] = bool(sched["delta_pp"] > 0 and sched["p"] is not None and sched["p"] < 0.01)
    return figures


def _fmt(pair: Optional[dict]) -> str:
    if pair is None:
        return "–"
    p = "–" if pair["p"] is None else f"{pair['p']:.1e}"
    mde = "–" if pair["mde_pp"] is None else f"{pair['mde_pp']:.2f}"
    return f"{pair['delta_pp']:+.2f} pp (sd {pair['sd_pp']:.2f}, MDE {mde}, p {p}, n {pair['n']})"


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.suite_targets",
                            description="the scenario suite's targets from a leaderboard folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="the leaderboard's --out folder")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="only these evaluation seeds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    figures = targets(Path(args.out), args.seeds)
    for name, row in figures["scenarios"].items():
        print(f"{name}: oracle - AVER {_fmt(row['oracle_vs_aver'])}; oracle - best-constant "
              f"{_fmt(row['oracle_vs_best_constant'])}")
    for key in ("noise_floor_sd_pp", "noise_floor_met", "specialists_met", "schedule_met"):
        if key in figures:
            print(f"{key}: {figures[key]}")
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
