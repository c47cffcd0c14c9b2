"""Paired statistics of two weightings evaluated on the same students (seeds).

A claim "X beats Y" is a paired test over the same fresh students; with it goes the minimum
detectable effect (MDE): the true mean difference that a two-sided paired t-test at level α
detects with the given power, for this many students and this spread of differences. A
difference below the MDE that "is not significant" says little: the comparison could not have
seen it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["PairedStats", "paired_stats", "minimum_detectable_effect", "ALPHA", "POWER"]

ALPHA = 0.05
POWER = 0.8


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """Smallest true mean paired difference a two-sided one-sample t-test on `n` differences with
    standard deviation `sd` detects at level `alpha` with probability `power` (exact, through the
    noncentral t distribution; where scipy's noncentral t fails, as for n = 2, the usual
    approximation (t_{1-α/2} + t_{power}) · sd / √n). None when n < 2 or sd is not a positive
    finite number."""
    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return None
    from scipy import optimize, stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:
        nc = effect * math.sqrt(n) / sd
        return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) - power

    try:
        hi = sd
        while shortfall(hi) < 0:
            hi *= 2
        return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-10 * sd))
    except ValueError:  # scipy's noncentral t can return NaN for very few degrees of freedom
        return float((crit + stats.t.ppf(power, df)) * sd / math.sqrt(n))


@dataclass
class PairedStats:
    """B − A over the same seeds: mean and sd of the differences, p-values, MDE."""

    n: int
    mean: float
    sd: float
    p_ttest: Optional[float]
    p_wilcoxon: Optional[float]
    mde: Optional[float]


def paired_stats(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> PairedStats:
    """Paired comparison of `b` against `a` (same order of seeds). The t-test p-value is None
    for n < 2 or when every difference is equal; the Wilcoxon one also when all differences are 0."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = int(diff.size)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    p_t = p_w = None
    if n > 1 and sd > 0:
        from scipy import stats

        p_t = float(stats.ttest_1samp(diff, 0.0).pvalue)
    if n > 1 and np.any(diff != 0):
        from scipy import stats

        p_w = float(stats.wilcoxon(diff).pvalue)
    return PairedStats(n, float(diff.mean()) if n else float("nan"), sd, p_t, p_w,
                       minimum_detectable_effect(sd, n, alpha, power))
