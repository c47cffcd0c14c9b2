"""W&B start-up with one set of fallbacks, and the metadata every run records.

W&B never needs network or login here: the default mode is "online" only when an API key is
already configured locally, else "offline" (a local run that `wandb sync` uploads later);
"disabled" does not import wandb at all. An online start that fails (no network, bad key) falls
back to offline with a warning instead of ending the run. `agents.tracking` adds the SB3 logger
(TensorBoard, metrics.jsonl) on top; `baselines.compare` logs one run per (policy, seed).
"""

from __future__ import annotations

import netrc
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, List, Optional, Tuple

__all__ = ["WANDB_MODES", "wandb_logged_in", "default_wandb_mode", "start_wandb", "package_versions", "git_info"]

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


def start_wandb(mode: str, *, project: str, group: Optional[str], name: str, config: dict, run_dir: Path,
                run_id: Optional[str] = None, tags: Optional[List[str]] = None, job_type: Optional[str] = None,
                step_metric: str = "global_step", reinit: str = "finish_previous", announce: bool = True) -> Any:
    """Start a W&B run in `run_dir/wandb` (None for "disabled"); every metric is plotted against
    `step_metric`. `announce` prints where the run is (offline folder or URL) to stderr."""
    if mode == "disabled":
        return None
    # wandb mistakes the `agents` package for the OpenAI Agents SDK and advertises Weave.
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    import wandb

    Path(run_dir).mkdir(parents=True, exist_ok=True)

    def start(m: str):
        # silent: no banner, sparklines or ads between the progress bar and our own output.
        settings = wandb.Settings(silent=True, **({"init_timeout": 30} if m == "online" else {}))
        return wandb.init(mode=m, project=project, group=group, name=name, config=config, dir=str(run_dir),
                          id=run_id, resume="allow" if run_id else None, tags=tags, job_type=job_type,
                          settings=settings, reinit=reinit)

    try:
        run = start(mode)
    except Exception as exc:  # wandb raises several error types for network/auth problems
        if mode != "online":
            raise
        print(f"warning: W&B online start failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
              "logging offline instead", file=sys.stderr)
        run = start("offline")
    run.define_metric(step_metric)
    run.define_metric("*", step_metric=step_metric)
    if announce:
        where = f"offline in {run.dir.rsplit('/files', 1)[0]} (upload later with `wandb sync` on it)" \
            if run.settings.mode == "offline" else f"online: {run.url}"
        print(f"W&B run {name}: {where}", file=sys.stderr)
    return run


def package_versions() -> dict:
    import gymnasium
    import numpy as np
    import stable_baselines3
    import torch

    versions = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__,
                "gymnasium": str(gymnasium.__version__),
                "stable_baselines3": str(stable_baselines3.__version__), "mtkd_env": metadata.version("mtkd-env")}
    try:
        import wandb

        versions["wandb"] = str(wandb.__version__)
    except ImportError:  # optional at runtime when W&B is disabled
        versions["wandb"] = None
    return versions


def git_info() -> dict:
    """Commit and dirty flag of the source tree this package runs from (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}
