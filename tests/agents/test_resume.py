"""Resume: a run interrupted by SIGINT and resumed ends bit-identical (CPU) to an uninterrupted one."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from agents import api
from agents.run import Run, TrainingInterrupted
from tests.runs import SendSignal, diff_states, metric_rows

HP = {"ppo": {"n_steps": 16, "batch_size": 8, "n_epochs": 2}, "sac": {"learning_starts": 8, "batch_size": 8},
      "mtkd-rl-pg": {"agent_step": 5}, "mtkd-rl": {"agent_step": 5, "dynamic": True}, "rmts": {"update_every": 3}}
TOTAL, KILL_AT = 44, 19


@pytest.mark.parametrize("algo", ["ppo", "sac", "mtkd-rl-pg", "mtkd-rl", "rmts"])
def test_interrupted_and_resumed_run_is_bit_identical(algo, synthetic_config, tmp_path):
    cfg = synthetic_config()
    kwargs = dict(env_config=cfg, total_timesteps=TOTAL, hyperparams=HP[algo], show_progress=False, save_freq=0)
    straight = api.train(algo, out_dir=str(tmp_path / "a"), **kwargs)

    # Whatever handled SIGINT before the run (Python's default, or SIG_IGN for a background job such as
    # `make test &`) handles it again afterwards.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as caught:
        api.train(algo, out_dir=str(tmp_path / "b"), callbacks=[SendSignal(KILL_AT)], **kwargs)
    stopped = caught.value
    assert KILL_AT <= stopped.num_timesteps < TOTAL and stopped.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert not (stopped.run_dir / "summary.json").exists()

    run = Run.resume(stopped.run_dir)
    assert run.agent.num_timesteps == stopped.num_timesteps
    if algo.startswith("mtkd-rl") or algo == "rmts":
        # The env's claim: after load_state_dict the prepared batch (hence the observation) is the saved one.
        assert torch.equal(torch.as_tensor(run.agent.env.current_observation()),
                           torch.as_tensor(run.agent.model._last_obs))
    resumed = run.train()

    final_a = torch.load(straight / "checkpoint/state.pt", weights_only=True)
    final_b = torch.load(resumed / "checkpoint/state.pt", weights_only=True)
    assert final_a["num_timesteps"] == final_b["num_timesteps"] >= TOTAL
    assert diff_states(final_a, final_b) == []
    assert metric_rows(straight) == metric_rows(resumed)
    assert json.loads((resumed / "summary.json").read_text())["num_timesteps"] == final_a["num_timesteps"]


def test_periodic_checkpoints_and_extending_a_finished_run(synthetic_config, tmp_path):
    cfg = synthetic_config()
    run_dir = api.train("mtkd-rl", env_config=cfg, total_timesteps=12, out_dir=str(tmp_path), save_freq=5,
                        show_progress=False)
    assert torch.load(run_dir / "checkpoint/state.pt", weights_only=True)["num_timesteps"] == 12
    api.resume(run_dir, total_timesteps=20, show_progress=False)
    assert json.loads((run_dir / "summary.json").read_text())["num_timesteps"] == 20
    steps = [json.loads(r)["global_step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 21))
