"""The scenario leaderboard: `python -m baselines.compare --scenarios all` (or a list).

Every policy on every scenario of `mtkd_env.scenarios`, on the same evaluation students per
scenario (paired against AVER): one ordinary comparison per scenario in `OUT/<scenario>/`
(resumable as any comparison: rerunning skips finished rows), then one table over all of them in
`OUT/leaderboard.{md,json,png}`: per (scenario, policy) the mean paired Δ test accuracy vs AVER
with its 95 % confidence interval, the minimum detectable effect (α 0.05, power 0.8), the paired
t-test p and its Holm adjustment **across the whole table**, and the normalised score
(Δ policy / Δ oracle: 0 = AVER, 1 = the scenario's oracle from `baselines.oracle`). W&B: every
(scenario, policy, seed) run and the leaderboard table (a `wandb.Table`) share one group per
leaderboard run, kept in `OUT/leaderboard_meta.json` so a resumed run joins it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import get_scenario
from mtkd_env.stats import ALPHA

from .. import report
from ..report import format_p, format_pp
from .options import REFERENCE, CompareError, CompareOptions

__all__ = ["LeaderboardRow", "run_leaderboard", "leaderboard_rows"]


@dataclasses.dataclass
class LeaderboardRow:
    scenario: str
    policy: str
    n: int
    test_mean: float
    delta: Optional[float]          # mean paired (policy - AVER) test accuracy
    ci_low: Optional[float]
    ci_high: Optional[float]
    diff_std: Optional[float]
    mde: Optional[float]
    p: Optional[float]              # paired t-test
    p_holm: Optional[float]         # Holm across the whole table
    score: Optional[float]          # delta / delta(oracle)


def _ci(st: report.PolicyStats) -> tuple:
    if st.delta is None or st.diff_std is None or not st.n_paired or st.n_paired < 2 or math.isnan(st.diff_std):
        return None, None
    from scipy import stats

    half = float(stats.t.ppf(1 - ALPHA / 2, st.n_paired - 1)) * st.diff_std / math.sqrt(st.n_paired)
    return st.delta - half, st.delta + half


def leaderboard_rows(per_scenario: Dict[str, List[report.PolicyStats]]) -> List[LeaderboardRow]:
    """The table's rows from each scenario's policy statistics; Holm over every p of the table."""
    rows: List[LeaderboardRow] = []
    for scenario, stats in per_scenario.items():
        oracle = next((s for s in stats if s.policy == "oracle"), None)
        scale = oracle.delta if oracle is not None and oracle.delta else None
        for st in stats:
            lo, hi = _ci(st)
            ref = st.policy == REFERENCE
            rows.append(LeaderboardRow(
                scenario, st.policy, st.n, st.test_mean, 0.0 if ref else st.delta, lo, hi, st.diff_std, st.mde,
                None if ref else st.p_ttest, None,
                0.0 if ref else (None if scale is None or st.delta is None else st.delta / scale)))
    adjusted = report.holm([r.p for r in rows])
    for r, p in zip(rows, adjusted):
        r.p_holm = p
    return rows


def table_markdown(rows: List[LeaderboardRow]) -> str:
    lines = ["| scenario | policy | n | test % | Δ vs AVER (pp) | 95 % CI (pp) | sd (pp) | MDE (pp) | p | p (Holm, table) "
             "| score |", "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = "—" if r.ci_low is None else f"[{format_pp(r.ci_low, True)}, {format_pp(r.ci_high, True)}]"
        score = "—" if r.score is None else f"{r.score:.2f}"
        lines.append(f"| {r.scenario} | {r.policy} | {r.n} | {100 * r.test_mean:.2f} | {format_pp(r.delta, True)} | "
                     f"{ci} | {format_pp(r.diff_std)} | {format_pp(r.mde)} | {format_p(r.p)} | "
                     f"{format_p(r.p_holm)} | {score} |")
    return "\n".join(lines)


def plot_heatmap(rows: List[LeaderboardRow], path: Path) -> None:
    """Policies x scenarios, coloured by the normalised score (clipped to [-1, 1.5]), each cell
    annotated with Δ pp (and * where Holm-adjusted p < 0.05)."""
    from ..report import _pyplot

    plt = _pyplot()
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    import numpy as np

    grid = np.full((len(policies), len(scenarios)), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(scenarios), 1.0 + 0.45 * len(policies)))
    for r in rows:
        i, j = policies.index(r.policy), scenarios.index(r.scenario)
        if r.score is not None:
            grid[i, j] = max(-1.0, min(1.5, r.score))
        text = format_pp(r.delta, True) + ("*" if r.p_holm is not None and r.p_holm < 0.05 else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=8)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-1.0, vmax=1.5, aspect="auto")
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_yticks(range(len(policies)), policies)
    ax.set_title("Δ test vs AVER (pp; * Holm p < 0.05); colour: normalised score (0 AVER, 1 oracle)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _group(out: Path, opts: CompareOptions) -> str:
    meta_path = out / "leaderboard_meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())["wandb_group"]
    group = opts.wandb_group or f"leaderboard-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps({"wandb_group": group}))
    return group


def run_leaderboard(opts: CompareOptions) -> List[LeaderboardRow]:
    """One comparison per scenario of `opts.scenarios`, then the leaderboard files (and W&B table)."""
    from .run import run_compare

    if REFERENCE not in opts.policies:
        raise CompareError(f"--scenarios: the leaderboard is paired against {REFERENCE!r}; add it to --policies")
    for name in opts.scenarios:
        get_scenario(name)
    out = Path(opts.out)
    group = _group(out, opts)
    per_scenario: Dict[str, List[report.PolicyStats]] = {}
    for name in opts.scenarios:
        print(f"== scenario {name} ==")
        config = opts.env_config.replace(scenario=name)
        if config.pool_size is not None:  # evaluation on the test instances only
            config = config.replace(instance_set="test")
        sub = dataclasses.replace(opts, scenarios=None, env_config=config, out=str(out / name), wandb_group=group)
        per_scenario[name] = run_compare(sub)
    rows = leaderboard_rows(per_scenario)
    _write(opts, rows, out)
    _log(opts, rows, group)
    return rows


def _write(opts: CompareOptions, rows: List[LeaderboardRow], out: Path) -> None:
    table = table_markdown(rows)
    text = "\n".join([
        "# Scenario leaderboard", "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{opts.command or 'run_leaderboard(...)'}`",
        f"- evaluation seeds: {list(opts.seeds)} (the same students for every policy of a scenario)",
        "- Δ: mean paired difference of final test accuracy to AVER; CI: 95 % t interval; MDE at α 0.05, power "
        "0.8; p: paired t-test, Holm-adjusted over every p of this table; score: Δ / Δ(oracle)", "",
        table, ""])
    atomic_write_text(out / "leaderboard.md", text)
    atomic_write_text(out / "leaderboard.json", json.dumps(
        {"seeds": list(opts.seeds), "policies": list(opts.policies), "scenarios": list(opts.scenarios),
         "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    plot_heatmap(rows, out / "leaderboard.png")
    print(table)


def _log(opts: CompareOptions, rows: List[LeaderboardRow], group: str) -> None:
    if opts.wandb == "disabled" or not rows:
        return
    from mtkd_env.runtime.tracking import start_wandb

    run = start_wandb(opts.wandb, project=opts.wandb_project, group=group, name="leaderboard",
                      job_type="leaderboard", run_dir=Path(opts.out), tags=["leaderboard"],
                      config={"policies": list(opts.policies), "seeds": list(opts.seeds),
                              "scenarios": list(opts.scenarios), "command": opts.command})
    import wandb

    columns = [f.name for f in dataclasses.fields(LeaderboardRow)]
    data = [[None if isinstance(v, float) and not math.isfinite(v) else v for v in dataclasses.astuple(r)]
            for r in rows]
    run.log({"leaderboard": wandb.Table(columns=columns, data=data),
             "leaderboard_heatmap": wandb.Image(str(Path(opts.out) / "leaderboard.png"))})
    run.finish()
