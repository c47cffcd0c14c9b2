"""Paired statistics: the minimum detectable effect and the paired summary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mtkd_env.stats import minimum_detectable_effect, paired_stats


def test_mde_has_the_stated_power():
    mde = minimum_detectable_effect(1.0, 10)
    assert mde == pytest.approx(0.996, abs=2e-3)  # ~ (t_0.975,9 + t_0.8,9) / sqrt(10)
    rng = np.random.default_rng(0)
    hits = np.mean([stats.ttest_1samp(rng.normal(mde, 1.0, 10), 0.0).pvalue < 0.05 for _ in range(4000)])
    assert hits == pytest.approx(0.8, abs=0.025)
    assert minimum_detectable_effect(2.0, 10) == pytest.approx(2 * mde)
    assert np.isfinite(minimum_detectable_effect(0.01, 2))
    assert minimum_detectable_effect(0.0, 10) is None and minimum_detectable_effect(1.0, 1) is None


def test_paired_stats():
    a = [0.90, 0.91, 0.92, 0.93]
    b = [0.91, 0.93, 0.92, 0.95]
    st = paired_stats(a, b)
    assert st.n == 4 and st.mean == pytest.approx(0.0125) and st.p_ttest == pytest.approx(
        stats.ttest_rel(b, a).pvalue)
    assert st.mde is not None and st.mde > st.mean
    same = paired_stats(a, a)
    assert same.p_ttest is None and same.p_wilcoxon is None and same.mde is None
