"""Statistics, summary table and plots of a policy comparison.

Policies are compared to a reference (AVER) on paired seeds: every policy trained the same students
(same seed -> same initialisation and data order), so the per-seed differences are paired samples.
Reported: mean ± std (ddof 1) test accuracy, mean paired difference, two-sided paired t-test and
Wilcoxon signed-rank p-values (scipy), wins/ties/losses, and the minimum detectable effect (MDE)
of each comparison: the true mean difference a paired t-test over these seeds detects at α = 0.05
with 80 % power, from the observed sd of the differences (`mtkd_env.stats`). The verdict uses
Holm-corrected t-test p-values over all comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from mtkd_env.stats import ALPHA, POWER, minimum_detectable_effect

__all__ = ["PolicyStats", "policy_stats", "holm", "summary_table", "verdict", "plot_curves", "plot_weights",
           "format_p", "format_pp"]


@dataclass
class PolicyStats:
    policy: str
    n: int
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    steps_per_s: float
    delta: Optional[float] = None        # mean paired (policy - reference) test accuracy
    p_ttest: Optional[float] = None
    p_wilcoxon: Optional[float] = None
    p_holm: Optional[float] = None
    wins: int = 0
    ties: int = 0
    losses: int = 0
    n_paired: int = 0
    diff_std: Optional[float] = None     # sd (ddof 1) of the paired differences
    mde: Optional[float] = None          # minimum detectable effect at alpha 0.05, power 0.8


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def _paired_tests(diff: np.ndarray):
    """Two-sided paired t-test and Wilcoxon p-values of differences `diff` (NaN when undefined:
    fewer than 2 pairs, or all differences identical)."""
    from scipy import stats

    if len(diff) < 2 or np.allclose(diff, diff[0]):
        same_zero = len(diff) >= 1 and np.allclose(diff, 0.0)
        return (1.0, 1.0) if same_zero else (float("nan"), float("nan"))
    p_t = float(stats.ttest_rel(diff, np.zeros_like(diff)).pvalue)
    try:
        p_w = float(stats.wilcoxon(diff).pvalue)
    except ValueError:  # every difference is zero after scipy's zero handling
        p_w = 1.0
    return p_t, p_w


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm-Bonferroni adjusted p-values (None / NaN entries are skipped and stay as they are)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out: List[Optional[float]] = list(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


def policy_stats(rows: List[dict], policies: Sequence[str], reference: str = "aver") -> List[PolicyStats]:
    """Stats per policy from result rows (dicts with policy, seed, test_acc, val_acc, steps_per_s),
    sorted by mean test accuracy (best first). Paired statistics need `reference` among the rows."""
    by_policy: Dict[str, Dict[int, dict]] = {}
    for row in rows:
        by_policy.setdefault(row["policy"], {})[int(row["seed"])] = row
    ref = by_policy.get(reference)
    out = []
    for name in policies:
        runs = by_policy.get(name, {})
        if not runs:
            continue
        test = np.array([float(r["test_acc"]) for r in runs.values()])
        val = np.array([float(r["val_acc"]) for r in runs.values()])
        st = PolicyStats(name, len(runs), float(test.mean()), _std(test), float(val.mean()), _std(val),
                         float(np.mean([float(r["steps_per_s"]) for r in runs.values()])))
        if ref is not None and name != reference:
            seeds = sorted(set(runs) & set(ref))
            diff = np.array([float(runs[s]["test_acc"]) - float(ref[s]["test_acc"]) for s in seeds])
            st.n_paired = len(seeds)
            if len(seeds):
                st.delta = float(diff.mean())
                st.p_ttest, st.p_wilcoxon = _paired_tests(diff)
                st.wins = int((diff > 1e-12).sum())
                st.losses = int((diff < -1e-12).sum())
                st.ties = len(seeds) - st.wins - st.losses
                st.diff_std = _std(diff)
                st.mde = minimum_detectable_effect(st.diff_std, len(seeds), ALPHA, POWER)
        out.append(st)
    adjusted = holm([s.p_ttest for s in out])
    for s, p in zip(out, adjusted):
        s.p_holm = p
    return sorted(out, key=lambda s: -s.test_mean)


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if not math.isnan(std) else f"{100 * mean:.2f}"


def format_p(p: Optional[float]) -> str:
    """A p-value for a table: 3 decimals, scientific below 0.001, "—" when undefined."""
    return "—" if p is None or math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def format_pp(x: Optional[float], signed: bool = False) -> str:
    """An accuracy (difference) as percentage points with 2 decimals, "—" when undefined."""
    if x is None or math.isnan(x):
        return "—"
    return f"{round(100 * x, 2) + 0.0:+.2f}" if signed else f"{100 * x:.2f}"  # + 0.0: no "-0.00"


def summary_table(stats: List[PolicyStats], reference: str = "aver") -> str:
    """Markdown table, best mean test accuracy first."""
    ref = reference.upper() if reference == "aver" else reference
    lines = [f"| rank | policy | seeds | test acc % (mean ± std) | val acc % | Δ test vs {ref} (pp) | "
             f"sd of Δ (pp) | MDE (pp) | p (paired t) | p (Wilcoxon) | W/T/L vs {ref} | steps/s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|"]
    for rank, s in enumerate(stats, 1):
        delta = format_pp(s.delta, signed=True)
        wtl = "—" if s.delta is None else f"{s.wins}/{s.ties}/{s.losses}"
        lines.append(f"| {rank} | {s.policy} | {s.n} | {_pct(s.test_mean, s.test_std)} | "
                     f"{_pct(s.val_mean, s.val_std)} | {delta} | {format_pp(s.diff_std)} | {format_pp(s.mde)} | "
                     f"{format_p(s.p_ttest)} | {format_p(s.p_wilcoxon)} | "
                     f"{wtl} | {s.steps_per_s:.1f} |")
    return "\n".join(lines)


def verdict(stats: List[PolicyStats], reference: str = "aver") -> str:
    """One paragraph: which policies beat / lose to the reference at Holm-corrected p < 0.05."""
    ref = reference.upper() if reference == "aver" else reference
    compared = [s for s in stats if s.delta is not None]
    if not compared:
        return f"No paired comparison: {ref} is not among the results."
    better = [s for s in compared if s.delta > 0 and s.p_holm is not None and s.p_holm < ALPHA]
    worse = [s for s in compared if s.delta < 0 and s.p_holm is not None and s.p_holm < ALPHA]
    n = max(s.n_paired for s in compared)
    test = (f"two-sided paired t-test over {n} seeds, Holm-corrected over {len(compared)} comparisons, "
            f"alpha = {ALPHA}")
    parts = []
    if better:
        parts.append("Beats " + ref + ": " + ", ".join(f"{s.policy} ({100 * s.delta:+.2f} pp, p_Holm = "
                                                     f"{format_p(s.p_holm)})" for s in better) + ".")
    else:
        top = max(compared, key=lambda s: s.delta)
        parts.append(f"No policy beats {ref} significantly ({test}); the largest mean gain is "
                     f"{top.policy} at {100 * top.delta:+.2f} pp (p_Holm = {format_p(top.p_holm)}).")
    if worse:
        parts.append("Significantly worse than " + ref + ": " + ", ".join(
            f"{s.policy} ({100 * s.delta:+.2f} pp, p_Holm = {format_p(s.p_holm)})" for s in worse) + ".")
    if better:
        parts.append(f"Test: {test}.")
    mdes = [s.mde for s in compared if s.mde is not None]
    if mdes:
        parts.append(f"Power: with {n} seeds a comparison detects (alpha {ALPHA}, power {POWER:.0%}) a true "
                     f"difference of {100 * min(mdes):.2f}–{100 * max(mdes):.2f} pp (MDE column, from each "
                     f"comparison's sd of differences); smaller true effects are likely missed.")
    if n < 6:
        parts.append(f"With {n} seeds the two-sided Wilcoxon test cannot reach p < 0.05 "
                     f"(its smallest p is {2 / 2 ** n:.3f}).")
    return " ".join(parts)


# --- plots -----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _aligned(runs: List[dict], steps_key: str, values_key: str):
    """Per-seed series on the union of their env steps, NaN where a run has no point (a diverged
    run stops early, and its last point is the divergence step): (steps (K,), values (R, K, ...))."""
    steps = sorted(set().union(*(r[steps_key] for r in runs)))
    index = {s: k for k, s in enumerate(steps)}
    first = np.asarray(runs[0][values_key], dtype=np.float64)
    out = np.full((len(runs), len(steps)) + first.shape[1:], np.nan)
    for i, r in enumerate(runs):
        for s, v in zip(r[steps_key], r[values_key]):
            out[i, index[s]] = v
    return np.asarray(steps), out


def plot_curves(curves: Dict[str, List[dict]], path: str, title: str = "") -> None:
    """Validation accuracy vs env step, mean ± std over seeds, one line per policy; the right panel
    zooms into the second half of training, where the policies separate.

    `curves[policy]` is a list (one per seed) of {"curve_steps": [...], "curve_val_acc": [...]}.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    last = 0
    for name, runs in curves.items():
        steps, acc = _aligned(runs, "curve_steps", "curve_val_acc")
        acc = 100 * acc
        last = max(last, int(steps[-1]))
        mean, std = np.nanmean(acc, 0), np.nan_to_num(np.nanstd(acc, 0))
        for ax in axes:
            line, = ax.plot(steps, mean, label=f"{name} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.12)
    zoom = axes[1]
    zoom.set_xlim(last / 2, last)
    shown = [ln.get_ydata()[np.asarray(ln.get_xdata()) >= last / 2] for ln in zoom.get_lines()]
    values = np.concatenate([v for v in shown if len(v)]) if shown else np.array([])
    if values.size and np.isfinite(values).any():
        lo, hi = np.nanmin(values), np.nanmax(values)
        pad = max(0.5, 0.15 * (hi - lo))
        zoom.set_ylim(lo - pad, hi + pad)
    axes[0].set_title(title or "Validation accuracy during distillation", fontsize=10)
    zoom.set_title("second half (zoom)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("env step (distillation iteration)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy % (mean ± std over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(curves: Dict[str, List[dict]], teacher_names: Sequence[str], path: str) -> None:
    """Mean logit weight per teacher over training (window means, averaged over seeds), one panel
    per policy; dashed lines are the feature weights where they differ from the logit weights."""
    plt = _pyplot()
    n = len(curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, runs) in zip(axes.flat, curves.items()):
        steps, wl = _aligned(runs, "weight_steps", "window_w_logit")
        wf = _aligned(runs, "weight_steps", "window_w_feat")[1]
        wl, wf = np.nanmean(wl, 0), np.nanmean(wf, 0)  # (K, M)
        for m, teacher in enumerate(teacher_names):
            ax.plot(steps, wl[:, m], color=colors[m % len(colors)], label=teacher)
            if not np.allclose(wl[:, m], wf[:, m], equal_nan=True):
                ax.plot(steps, wf[:, m], color=colors[m % len(colors)], ls="--")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xlabel("env step", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("teacher weight (batch mean)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Teacher weights over training (mean over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


