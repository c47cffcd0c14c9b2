"""torch.distributed (gloo, CPU): a 2-process run equals a 1-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.mtkd_env import dist_worker


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, teacher_cache):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2])] +
                                                                            sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(Path(__file__).parent / "dist_worker.py"), str(out), teacher_cache],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("granularity", ["teacher", "sample"])
def test_two_ranks_match_one_process(two_rank_run, teacher_cache, granularity):
    obs0 = np.load(two_rank_run / f"{granularity}_obs_rank0.npy")
    obs1 = np.load(two_rank_run / f"{granularity}_obs_rank1.npy")
    np.testing.assert_array_equal(obs0, obs1)  # every rank builds the same global observation
    np.testing.assert_array_equal(np.load(two_rank_run / f"{granularity}_rewards_rank0.npy"),
                                  np.load(two_rank_run / f"{granularity}_rewards_rank1.npy"))
    single_obs, single_rewards, student = dist_worker.run(granularity, teacher_cache)
    np.testing.assert_allclose(obs0, single_obs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(two_rank_run / f"{granularity}_rewards_rank0.npy"), single_rewards,
                               rtol=1e-4, atol=1e-5)
    two = torch.load(two_rank_run / f"{granularity}_student.pt", weights_only=True)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5)


def test_batchnorm_student_with_probe_reward_runs_on_two_ranks(two_rank_run):
    obs0 = np.load(two_rank_run / "bn_obs_rank0.npy")
    np.testing.assert_array_equal(obs0, np.load(two_rank_run / "bn_obs_rank1.npy"))
    assert np.all(np.isfinite(obs0))
