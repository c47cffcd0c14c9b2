"""The signals of a training run: SIGINT/SIGTERM ask a `Run` for a checkpoint at its next safe
point and end it with `TrainingInterrupted`; a second one aborts at once with `TrainingAborted`.
`catch_stop_signals` installs a handler for both (and gives back the ones it replaced), and
`ignore_late_signals` is what a stopped rank of a distributed run keeps afterwards."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable, Dict

__all__ = ["TrainingInterrupted", "TrainingAborted", "STOP_SIGNALS", "catch_stop_signals", "restore_handlers",
           "ignore_late_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; `run_dir` resumes it."""

    def __init__(self, run_dir: Path, num_timesteps: int, signum: int, world_size: int = 1) -> None:
        how = ("python -m agents.train" if world_size == 1 else
               f"torchrun <the same {world_size} processes> -m agents.train")
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {num_timesteps}; resume with: "
                         f"{how} --resume {run_dir}")
        self.run_dir, self.num_timesteps, self.signum = run_dir, num_timesteps, signum


class TrainingAborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: the run stops at once (the last periodic checkpoint stays);
    `signum` is that signal, so the CLI exits 128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def catch_stop_signals(handler: Callable[[int, Any], None]) -> Dict[int, Any]:
    """Install `handler` for SIGINT and SIGTERM; returns the handlers it replaced (none outside the
    main thread, where signals stay with the caller)."""
    old = {}
    for sig in STOP_SIGNALS:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return old


def restore_handlers(old: Dict[int, Any]) -> None:
    """Put back the handlers `catch_stop_signals` replaced."""
    for sig, handler in old.items():
        signal.signal(sig, handler)


def ignore_late_signals(run) -> None:
    """torchrun forwards SIGTERM to every rank, but one rank may already have stopped on another
    rank's copy (the ranks agree on a stop at each safe point): that late signal asks for what is
    done, so it must not kill the rank on its way out. Outside a stopped run it acts as usual.
    The run's own handlers replace this one while it trains and restore it afterwards."""
    def handler(signum: int, frame) -> None:
        if run.stop_signal is not None:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
