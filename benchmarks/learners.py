"""The learned policies of a leaderboard folder, against AVER, the best constant, the formulas and the oracle.

    python -m benchmarks.learners --out LEADERBOARD_DIR [--json FILE] [--png FILE] [--md FILE]
        [--train-instances DIR]

For every scenario folder (`baselines.compare --scenarios ... --out DIR`) and every RL learner in its
`results.csv` (names of `agents.api.ALGOS`), from the same fresh students (paired by evaluation seed):

- Δ test accuracy vs AVER, its p and MDE, and the normalised score Δ / Δ(oracle) (0 = AVER, 1 = the
  oracle, both measured on the same students);
- the same per training seed (evaluation seed s is served by the agent of train seed
  `train_seeds[s % len(train_seeds)]`, so each training seed has its own students);
- Δ vs the best constant weighting (`best-constant`), per learner and per training seed;
- Δ vs every formula baseline in the folder, Holm-adjusted across the whole table (the "beats every
  formula" question), and the same per training seed, Holm-adjusted across all the per-seed rows (the
  moonshot's "on every training seed": `beats_every_formula_every_seed`);
- the learning curve: each training student's test-accuracy advantage over its AVER twin (same
  initialisation and batches, `episode/advantage_test` of the run's `metrics.jsonl`) divided by the
  oracle's Δ, per training episode; "students to half the gap" is the first training student at which
  the mean over training seeds of a trailing 5-student mean reaches 0.5;
- with `--train-instances DIR`, the generalisation table of `pools` (`generalisation`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import SCENARIOS

from agents.api import ALGOS
from agents.curves import episode_series
from agents.tracking import read_metrics
from baselines.report import format_p, holm

from .suite_targets import accuracies, pair

__all__ = ["learner_figures", "learning_curve", "generalisation", "main"]

REFERENCES = ("aver", "oracle", "best-constant")
WINDOW = 5
"""Training students in the trailing mean of the learning curve."""


def _train_seeds(folder: Path, algo: str) -> Dict[int, Path]:
    manifest = folder / "agents.json"
    entries = json.loads(manifest.read_text()).get(algo, {}) if manifest.is_file() else {}
    return {int(seed): folder / rel for seed, rel in entries.items()}


def learning_curve(run_dirs: Sequence[Path], oracle_gap_pp: Optional[float]) -> Optional[dict]:
    """Per training episode, the normalised advantage of the training student over its AVER twin:
    one array per run (`runs`), their mean (`mean`), and the students needed for half the gap."""
    runs = []
    for run in run_dirs:
        metrics = Path(run) / "metrics.jsonl"
        if not metrics.is_file():
            continue
        series = episode_series(read_metrics(metrics))
        if "episode/advantage_test" in series:
            runs.append(100 * series["episode/advantage_test"])
    if not runs or not oracle_gap_pp:
        return None
    length = min(len(r) for r in runs)
    scores = np.array([r[:length] for r in runs]) / oracle_gap_pp
    trailing = np.array([[s[max(0, i - WINDOW + 1):i + 1].mean() for i in range(length)] for s in scores])
    mean = trailing.mean(axis=0)
    reached = np.nonzero(mean >= 0.5)[0]
    return {"runs": scores.tolist(), "trailing_mean": mean.tolist(),
            "students_to_half_gap": int(reached[0]) + 1 if reached.size else None, "episodes": length}


def learner_figures(out: Path) -> dict:
    """Every learner's figures in every scenario folder of `out` (see the module docstring)."""
    found = [name for name in SCENARIOS if (out / name / "results.csv").is_file()]
    if not found:
        raise ConfigError(f"--out: {str(out)!r} holds no scenario results (expected <scenario>/results.csv from "
                          f"python -m baselines.compare --scenarios ...)")
    figures: Dict[str, dict] = {}
    formula_rows, seed_formula_rows = [], []
    for name in found:
        acc = accuracies(out / name, None)
        oracle = pair(acc, "aver", "oracle")
        gap = oracle["delta_pp"] if oracle else None
        formulas = [p for p in acc if p not in ALGOS and p not in REFERENCES and p != "no-kd"]
        learners = {}
        for algo in (p for p in acc if p in ALGOS):
            seeds = _train_seeds(out / name, algo)
            order = sorted(seeds)
            row = {"vs_aver": pair(acc, "aver", algo), "vs_best_constant": pair(acc, "best-constant", algo),
                   "per_train_seed": {}, "vs_formulas": {}}
            row["score"] = row["vs_aver"]["delta_pp"] / gap if gap and row["vs_aver"] else None
            for k, ts in enumerate(order):
                mine = {p: {s: v for s, v in acc[p].items() if s % len(order) == k} for p in acc}
                seed_row = {"vs_aver": pair(mine, "aver", algo), "vs_best_constant": pair(mine, "best-constant", algo),
                            "vs_formulas": {formula: pair(mine, formula, algo) for formula in formulas}}
                seed_formula_rows.extend(seed_row["vs_formulas"].values())
                if gap and seed_row["vs_aver"]:
                    seed_row["score"] = seed_row["vs_aver"]["delta_pp"] / gap
                row["per_train_seed"][str(ts)] = seed_row
            for formula in formulas:
                row["vs_formulas"][formula] = pair(acc, formula, algo)
                formula_rows.append(row["vs_formulas"][formula])
            row["learning_curve"] = learning_curve([seeds[s] for s in order], gap)
            learners[algo] = row
        figures[name] = {"oracle_vs_aver": oracle, "formulas": formulas, "learners": learners}
    for family in (formula_rows, seed_formula_rows):  # two families: pooled, and per training seed
        for stats, p_holm in zip(family, holm([r["p"] if r else None for r in family])):
            if stats:
                stats["p_holm"] = p_holm
    for scenario in figures.values():
        for row in scenario["learners"].values():
            row["beats_every_formula"] = _wins(row["vs_formulas"])
            seeds = row["per_train_seed"].values()
            row["beats_every_formula_every_seed"] = bool(seeds) and all(_wins(s["vs_formulas"]) for s in seeds)
    return figures


def _wins(vs_formulas: Dict[str, Optional[dict]]) -> bool:
    """Ahead of every formula that has a comparison, each at Holm p < 0.01."""
    rows = [r for r in vs_formulas.values() if r]
    return bool(rows) and all(r["delta_pp"] > 0 and r.get("p_holm") is not None and r["p_holm"] < 0.01 for r in rows)


def generalisation(test_folder: Path, train_folder: Path) -> Dict[str, dict]:
    """Per policy of both folders (the `pools` scenario evaluated on its test instances, and a
    comparison of the same agents on the train instances, `--env scenario=pools instance_set=train
    --agent-dir ...`): Δ vs AVER on each and their ratio (test / train). The oracle is searched on
    the test instances only, so the ratio is of Δ, not of normalised scores."""
    test, train = accuracies(test_folder, None), accuracies(train_folder, None)
    out = {}
    for policy in sorted(set(test) & set(train) - {"aver"}):
        a, b = pair(test, "aver", policy), pair(train, "aver", policy)
        ratio = a["delta_pp"] / b["delta_pp"] if a and b and b["delta_pp"] > 0 else None
        out[policy] = {"test": a, "train": b, "test_over_train": ratio}
    return out


def _pp(stats: Optional[dict]) -> str:
    return "–" if not stats else f"{stats['delta_pp']:+.2f} (p {format_p(stats['p'])}, n {stats['n']})"


def _score(score: Optional[float]) -> str:
    """A normalised score, "–" where the scenario has no oracle gap (the oracle is AVER)."""
    return "–" if score is None else f"{score:.2f}"


def markdown(figures: dict) -> str:
    lines = ["| scenario | learner | Δ vs AVER pp (p, n) | score | per training seed: score, Δ vs AVER p | "
             "Δ vs best constant pp (p) | best formula: Δ pp (p Holm) | students to ½ gap |",
             "|---|---|---|---:|---|---|---|---:|"]
    for name, scenario in figures.items():
        for algo, row in scenario["learners"].items():
            seeds = "; ".join(f"{ts}: {_score(r.get('score'))}, p {format_p((r['vs_aver'] or {}).get('p'))}"
                              for ts, r in row["per_train_seed"].items())
            closest = min((r for r in row["vs_formulas"].values() if r), key=lambda r: r["delta_pp"], default=None)
            best = "–" if closest is None else f"{closest['delta_pp']:+.2f} ({format_p(closest.get('p_holm'))})"
            curve = row["learning_curve"]
            half = "–" if curve is None else (str(curve["students_to_half_gap"]) if curve["students_to_half_gap"]
                                              else f"> {curve['episodes']}")
            lines.append(f"| {name} | {algo} | {_pp(row['vs_aver'])} | {_score(row['score'])} | {seeds} | "
                         f"{_pp(row['vs_best_constant'])} | {best} | {half} |")
    return "\n".join(lines) + "\n"


def plot(figures: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, s) for n, s in figures.items() if any(r["learning_curve"] for r in s["learners"].values())]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, scenario) in zip(axes[0], panels):
        for k, (algo, row) in enumerate(scenario["learners"].items()):
            curve = row["learning_curve"]
            if curve is None:
                continue
            x = np.arange(1, curve["episodes"] + 1)
            for run in curve["runs"]:
                ax.plot(x, run, color=f"C{k}", alpha=0.15, lw=0.8)
            ax.plot(x, curve["trailing_mean"], color=f"C{k}", lw=2, label=algo)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(1, color="black", lw=0.8, ls="--")
        ax.set_ylim(-2, 2)
        ax.set_title(name)
        ax.set_xlabel("training student")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("advantage over AVER twin / oracle gap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.learners",
                            description="the learned policies of a leaderboard folder against the references")
    parser.add_argument("--out", required=True, metavar="DIR", help="the leaderboard's --out folder")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--md", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--png", metavar="FILE", help="also draw the learning curves into FILE")
    parser.add_argument("--train-instances", metavar="DIR",
                        help="a comparison of the pools agents on the train instances: adds the generalisation table")
    args = parser.parse_args(argv)
    figures = learner_figures(Path(args.out))
    payload = dict(figures)
    table = markdown(figures)
    if args.train_instances:
        if not (Path(args.out) / "pools" / "results.csv").is_file() or not (Path(args.train_instances) /
                                                                            "results.csv").is_file():
            raise ConfigError(f"--train-instances: expected {args.out}/pools/results.csv and "
                              f"{args.train_instances}/results.csv")
        gen = generalisation(Path(args.out) / "pools", Path(args.train_instances))
        payload["_generalisation"] = gen
        table += ("\n| policy (pools) | Δ vs AVER, test instances pp (p, n) | Δ vs AVER, train instances pp (p, n) "
                  "| test / train |\n|---|---|---|---:|\n")
        for policy, row in gen.items():
            ratio = "–" if row["test_over_train"] is None else f"{row['test_over_train']:.2f}"
            table += f"| {policy} | {_pp(row['test'])} | {_pp(row['train'])} | {ratio} |\n"
    print(table, end="")
    for name, scenario in figures.items():
        for algo, row in scenario["learners"].items():
            if row["beats_every_formula"]:
                print(f"{name}: {algo} beats every formula baseline (Holm p < 0.01)"
                      + (", and on every training seed" if row["beats_every_formula_every_seed"] else
                         ", not on every training seed"))
    if args.json:
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    if args.md:
        atomic_write_text(args.md, table)
    if args.png:
        plot(figures, args.png)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
