"""Run tracking: one SB3 `Logger` that writes TensorBoard events, a JSON-lines metrics file and W&B.

Every algorithm (SB3's and the MTKD-RL agents) records through the same logger, so SB3's own
`train/*` and `rollout/*` scalars and this project's per-step and per-episode metrics share one
step axis (`global_step` = env steps). W&B receives them through `WandbWriter`, the equivalent of
wandb's SB3 integration with `sync_tensorboard` but without a second, competing step counter.

W&B never needs network or login here: the default mode is "online" only when an API key is
already configured locally, else "offline" (a local run that `wandb sync` uploads later);
"disabled" does not import wandb at all.
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

__all__ = ["WANDB_MODES", "default_wandb_mode", "wandb_logged_in", "JSONLWriter", "WandbWriter",
           "make_logger", "init_wandb", "package_versions", "git_info", "read_metrics"]

WANDB_MODES: Tuple[str, ...] = ("online", "offline", "disabled")


def wandb_logged_in() -> bool:
    """True when a W&B API key is configured locally (env var or netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def default_wandb_mode() -> str:
    """`$WANDB_MODE` when set to a known mode, else "online" if logged in, else "offline"."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode == "dryrun":
        env_mode = "offline"
    if env_mode in WANDB_MODES:
        return env_mode
    return "online" if wandb_logged_in() else "offline"


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
    formats: list = [TensorBoardOutputFormat(str(run_dir / "tb")), JSONLWriter(run_dir / "metrics.jsonl")]
    if wandb_run is not None:
        formats.append(WandbWriter(wandb_run))
    return Logger(folder=str(run_dir), output_formats=formats)


def init_wandb(mode: str, *, project: str, group: Optional[str], name: str, config: dict, run_dir: Path,
               run_id: Optional[str] = None, tags: Optional[list] = None):
    """Start a W&B run in `run_dir/wandb` (None for "disabled"). An online start that fails (no
    network, bad key) falls back to offline with a warning instead of ending the training run."""
    if mode == "disabled":
        return None
    # wandb mistakes this package for the OpenAI Agents SDK ("agents") and advertises Weave.
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    import wandb

    def start(m: str):
        # silent: no banner, sparklines or ads between the progress bar and our summary (we print
        # where the run is ourselves).
        settings = wandb.Settings(silent=True, **({"init_timeout": 30} if m == "online" else {}))
        return wandb.init(mode=m, project=project, group=group, name=name, config=config, dir=str(run_dir),
                          id=run_id, resume="allow" if run_id else None, tags=tags, settings=settings,
                          reinit="finish_previous")

    try:
        run = start(mode)
    except Exception as exc:  # wandb raises several error types for network/auth problems
        if mode != "online":
            raise
        print(f"warning: W&B online start failed ({str(exc).splitlines()[0]}); logging offline instead",
              file=sys.stderr)
        run = start("offline")
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    where = f"offline in {run.dir.rsplit('/files', 1)[0]} (upload later with `wandb sync` on it)" \
        if run.settings.mode == "offline" else f"online: {run.url}"
    print(f"W&B run {name}: {where}", file=sys.stderr)
    return run


def package_versions() -> dict:
    import gymnasium
    import stable_baselines3
    import torch

    import mtkd_env

    versions = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__,
                "gymnasium": str(gymnasium.__version__),
                "stable_baselines3": str(stable_baselines3.__version__), "mtkd_env": str(mtkd_env.__version__)}
    try:
        import wandb

        versions["wandb"] = str(wandb.__version__)
    except ImportError:  # optional at runtime when W&B is disabled
        versions["wandb"] = None
    return versions


def git_info() -> dict:
    """Commit and dirty flag of the source tree this package runs from (None outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def read_metrics(path: Union[str, Path]) -> list:
    """All rows of a `metrics.jsonl` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
