"""Resume: a run interrupted by SIGINT and resumed ends bit-identical (CPU) to an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents import api
from agents.run import Run, TrainingInterrupted

HP = {"ppo": {"n_steps": 16, "batch_size": 8, "n_epochs": 2}, "sac": {"learning_starts": 8, "batch_size": 8},
      "mtkd-rl-pg": {"agent_step": 5}, "mtkd-rl": {"agent_step": 5, "dynamic": True}, "rmts": {"update_every": 3}}
TOTAL, KILL_AT = 44, 19
# Wall-clock values (Monitor episode times, SB3 fps) legitimately differ between the two runs.
CLOCK_KEYS = ("wall_time", "/t", "episode_times", "wandb_run_id")


class SendSignal(BaseCallback):
    """Sends a real signal to this process after step `at` (the run's handler must catch it)."""

    def __init__(self, at: int, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.at, self.signum = at, signum

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            os.kill(os.getpid(), self.signum)
        return True


def _diff(a, b, path=""):
    if any(k in path for k in CLOCK_KEYS):
        return []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _diff(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


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
    assert _diff(final_a, final_b) == []
    assert _metrics(straight) == _metrics(resumed)
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
