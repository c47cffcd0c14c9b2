"""Run tracking: one SB3 `Logger` that writes TensorBoard events, a JSON-lines metrics file and W&B.

Every algorithm (SB3's and the MTKD-RL agents) records through the same logger, so SB3's own
`train/*` and `rollout/*` scalars and this project's per-step and per-episode metrics share one
step axis (`global_step` = env steps). W&B receives them through `WandbWriter`, the equivalent of
wandb's SB3 integration with `sync_tensorboard` but without a second, competing step counter.

W&B start-up (modes, the offline fallback) is `mtkd_env.runtime.tracking.start_wandb`, shared with
`baselines.compare`. Without TensorBoard installed, the logger writes metrics.jsonl and W&B only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

__all__ = ["JSONLWriter", "WandbWriter", "make_logger", "metric_lines", "read_metrics"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):  # 0-d torch tensors
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    return value


class JSONLWriter(KVWriter):
    """Appends one JSON object per `dump`: {"global_step": step, key: value, ...}."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.file = open(self.path, "a")

    def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
        row = {"global_step": int(step)}
        for key, value in sorted(key_values.items()):
            excluded = key_excluded.get(key)
            if excluded is not None and "json" in excluded:
                continue
            value = _jsonable(value)
            if isinstance(value, (int, float, str, bool)) or value is None:
                row[key] = value
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class WandbWriter(KVWriter):
    """Forwards logger records to an active W&B run, with `global_step` as the step metric."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
        data: Dict[str, Any] = {"global_step": int(step)}
        for key, value in key_values.items():
            excluded = key_excluded.get(key)
            if excluded is not None and "wandb" in excluded:
                continue
            value = _jsonable(value)
            if isinstance(value, (int, float, bool)):
                data[key] = value
        self.run.log(data)

    def close(self) -> None:
        pass


def make_logger(run_dir: Path, wandb_run: Any = None) -> Logger:
    """Logger writing TensorBoard events to `run_dir/tb`, rows to `run_dir/metrics.jsonl` and W&B."""
    formats: list = [JSONLWriter(run_dir / "metrics.jsonl")]
    try:
        formats.insert(0, TensorBoardOutputFormat(str(run_dir / "tb")))
    except (ImportError, AssertionError) as exc:  # SB3 asserts when the tensorboard package is missing
        print(f"warning: no TensorBoard events ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
              "metrics go to metrics.jsonl" + (" and W&B" if wandb_run is not None else ""), file=sys.stderr)
    if wandb_run is not None:
        formats.append(WandbWriter(wandb_run))
    return Logger(folder=str(run_dir), output_formats=formats)


def metric_lines(path: Union[str, Path]) -> List[Tuple[str, dict]]:
    """(line, row) of every complete row of a `metrics.jsonl` file. A torn last line (no newline
    after it and not a JSON object: what a process killed mid-write leaves) is skipped; it was logged
    after the last checkpoint, so a resumed run writes it again. Any other line that is not a JSON
    object is a one-line `ConfigError` naming the file and line."""
    from mtkd_env.runtime.errors import ConfigError

    lines = Path(path).read_bytes().decode("utf-8", errors="replace").split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            if i == len(lines) - 1:  # the torn tail
                break
            raise ConfigError(f"{str(path)!r} line {i + 1}: expected a JSON object (a metrics row of "
                              f"agents.train), got {line[:40]!r}")
        out.append((line, row))
    return out


def read_metrics(path: Union[str, Path]) -> list:
    """All complete rows of a `metrics.jsonl` file (a torn last line is skipped: `metric_lines`)."""
    return [row for _, row in metric_lines(path)]
