"""Fixtures of the baseline policies' tests: play an episode out and compare two plays of it."""

from __future__ import annotations

import numpy as np
import pytest


def _finish(env, policy):
    """Step `env` under `policy` to the end of its episode: ([(w_logit, w_feat, loss) per step], final test acc)."""
    trace = []
    while True:
        w_logit, w_feat = policy.act()
        *_, terminated, _, info = env.step_weights(w_logit, w_feat)
        trace.append((w_logit, w_feat, info["loss"]))
        if terminated:
            return trace, info["final_test_acc"]


def _assert_same_episode(straight, acc, resumed, acc2, steps):
    """Two plays of an episode's end (`_finish`) are identical: weights, losses and final accuracy."""
    assert acc2 == acc and len(resumed) == len(straight) == steps
    for (a, b, la), (c, d, lc) in zip(straight, resumed):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
        assert la == lc


@pytest.fixture
def finish_episode():
    return _finish


@pytest.fixture
def assert_same_episode():
    return _assert_same_episode
