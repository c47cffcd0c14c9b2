"""What the run tests share: a signal sent mid-run (`SendSignal`), and what they compare: two
checkpoints (`diff_states`) and two runs' metrics (`metric_rows`)."""

from __future__ import annotations

import json
import math
import os
import signal

import torch
from stable_baselines3.common.callbacks import BaseCallback

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


def diff_states(a, b, path: str = "") -> list:
    """Where two checkpoints (nested dicts, lists, tensors) differ, wall-clock values aside: [] if nowhere."""
    if any(k in path for k in CLOCK_KEYS):
        return []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in diff_states(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_states(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def metric_rows(run_dir) -> list:
    """The rows of a run's metrics.jsonl without their wall-clock `time/*` values."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def record_pid_then_sleep(seconds: float) -> None:
    """A job for executor tests: write this worker's pid into $PID_DIR, then sleep `seconds`."""
    import os
    import time
    from pathlib import Path

    Path(os.environ["PID_DIR"], str(os.getpid())).touch()
    time.sleep(seconds)
