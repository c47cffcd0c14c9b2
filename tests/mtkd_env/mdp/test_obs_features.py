"""`obs_features`: a named subset of the teacher-granularity statistics."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mtkd_env.config import ConfigError
from mtkd_env.env import MultiTeacherKDEnv


def test_selected_columns_match_the_full_observation(synthetic_config):
    full = MultiTeacherKDEnv(synthetic_config())
    chosen = ["lr", "acc", "student_ce", "entropy"]
    part = MultiTeacherKDEnv(synthetic_config(obs_features=chosen))
    m = full.num_teachers
    assert part.observation_space.shape == (1 + m + 1 + m,)
    index = [full.feature_names.index(n) for n in part.feature_names]
    assert part.feature_names[0] == "student/lr" and part.feature_names[-1].endswith("/entropy")
    a, _ = full.reset(seed=3)
    b, _ = part.reset(seed=3)
    assert np.array_equal(a[index], b)
    for _ in range(3):
        a, *_ = full.step_weights(np.full(m, 1 / m, dtype=np.float32))
        b, *_ = part.step_weights(np.full(m, 1 / m, dtype=np.float32))
        assert np.array_equal(a[index], b) and part.observation_space.contains(b)
    # no feature cosines computed for an observation that does not show them
    assert full.engine.batch.cos.abs().sum() > 0 and not part.engine.batch.cos.any()
    check_env(part, skip_render_check=True)


@pytest.mark.parametrize("bad", [[], ["ce", "ce"], ["kl_div"]])
def test_bad_obs_features_are_refused(bad, synthetic_config):
    with pytest.raises(ConfigError, match="obs_features"):
        synthetic_config(obs_features=bad)


def test_obs_features_need_teacher_granularity(synthetic_config):
    with pytest.raises(ConfigError, match="teacher-granularity"):
        synthetic_config(obs_features=["ce"], granularity="sample")
