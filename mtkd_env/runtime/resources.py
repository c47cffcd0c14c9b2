"""Compute resources: which torch device a name means, and how many CPU threads a process may use.

Threads. Two torch processes with torch's default thread count on 2 cores ran about 40x slower
than with one thread each (OpenMP workers spinning against each other). The default here cannot
oversubscribe the processes one launch starts: every CLI calls `configure_threads(workers)`, which
gives each process

    max(1, min(torch's default, usable CPUs // (workers x torchrun ranks on this node)))

intra-op threads, where usable CPUs honour the CPU affinity mask and a cgroup CPU quota,
`workers` is the number of concurrent worker processes the CLI itself starts (`baselines.compare
--jobs N`; a vector env with N workers passes N) and the torchrun ranks are `LOCAL_WORLD_SIZE`.
A single process therefore keeps torch's own default. Override: `MTKD_NUM_THREADS=N` sets N
threads per process; `OMP_NUM_THREADS=N` (read by torch itself) is left alone. Independent
launches cannot see each other: run them with `OMP_NUM_THREADS=1` (or `MTKD_NUM_THREADS=1`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "usable_cpus", "local_ranks", "default_num_threads", "configure_threads",
           "THREADS_VARIABLE"]

THREADS_VARIABLE = "MTKD_NUM_THREADS"
"""Environment variable that sets the intra-op threads of every process (overrides the default)."""

_TORCH_DEFAULT: Optional[int] = None


def resolve_device(name: str) -> torch.device:
    """The device `name` ("auto", "cpu", "cuda", "cuda:N") means on this machine; a `ConfigError`
    when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available on this machine; expected "
                          f"device='cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota if one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def local_ranks() -> int:
    """Processes torchrun started on this node (`LOCAL_WORLD_SIZE`), 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_num_threads(workers: int = 1) -> int:
    """Intra-op threads per process when `workers` processes per torchrun rank run at once."""
    global _TORCH_DEFAULT
    if _TORCH_DEFAULT is None:
        _TORCH_DEFAULT = torch.get_num_threads()
    share = usable_cpus() // max(1, int(workers) * local_ranks())
    return max(1, min(_TORCH_DEFAULT, share))


def configure_threads(workers: int = 1) -> int:
    """Apply the thread default of this module's docstring (or `MTKD_NUM_THREADS`); returns the
    thread count in effect. `OMP_NUM_THREADS`, when set, is left to torch."""
    override = os.environ.get(THREADS_VARIABLE, "").strip()
    if override:
        try:
            threads = int(override)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigError(f"{THREADS_VARIABLE}: expected an integer >= 1, got {override!r}")
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    else:
        threads = default_num_threads(workers)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
