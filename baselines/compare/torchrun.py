"""baselines.compare under torchrun: every rank runs the same episodes in this process."""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, List

from mtkd_env.distributed import DistContext

from .options import CompareError, CompareOptions

__all__ = ["launched_by_torchrun", "join_torchrun", "rank0"]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_torchrun(opts: CompareOptions, rl: List[str]) -> DistContext:
    """Under torchrun, every rank runs the same episodes in this process, each one distillation
    spread over all ranks; check the options allow that, then join the process group."""
    from mtkd_env.distributed import init_from_env

    if not launched_by_torchrun():
        return DistContext()
    if opts.jobs != 1:
        raise CompareError(f"--jobs: under torchrun every rank runs the same episodes in this process, so --jobs "
                           f"must be 1, got {opts.jobs}")
    if rl:
        raise CompareError(f"under torchrun baselines.compare runs formula policies only, got RL policies {rl}; "
                           f"evaluate them in a 1-process comparison with the same --env and combine the "
                           f"folders with --merge")
    return init_from_env(opts.env_config.device)


def rank0(ctx: DistContext, fn: Callable[[], Any], *, then_others: bool = False) -> Any:
    """`fn()` on rank 0 first; every rank gets rank 0's (picklable) result, or, with `then_others`,
    calls `fn()` itself once rank 0 is done (e.g. building the env after rank 0 trained missing
    teachers into the shared cache). An error on rank 0 is raised on every rank, so no rank is
    left waiting in a collective."""
    if not ctx.enabled:
        return fn()
    import torch.distributed as dist

    outcome: List[Any] = [None]
    if ctx.is_main:
        try:
            value = fn()
        except Exception as exc:
            dist.broadcast_object_list([("error", _picklable(exc))], src=0)
            raise
        dist.broadcast_object_list([("ok", None if then_others else value)], src=0)
        return value
    dist.broadcast_object_list(outcome, src=0)
    status, payload = outcome[0]
    if status == "error":
        raise payload
    return fn() if then_others else payload


def _picklable(exc: Exception) -> Exception:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
