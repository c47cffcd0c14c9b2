"""What an entry point needs from torch.distributed beyond the env: agreeing on outcomes.

Under `torchrun`, every rank runs the same `agents.train` code with the same seed and the env
applies rank 0's action on every rank (`mtkd_env.runtime.distributed`), so rank 0's agent decides. Every
env call is a collective, so anything that can end a run early (a bad input, a failed build, a
signal) must end it on every rank at the same point. The helpers here turn one rank's outcome
into every rank's outcome; without a process group they are plain calls.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, List, Optional, TypeVar

import torch
import torch.distributed as dist

from .distributed import DistContext, leave  # noqa: F401  (re-exported: entry points leave the group together)

from .errors import ConfigError, first_line, is_user_error

__all__ = ["launched_by_torchrun", "launch_rank", "join", "RankFailed", "on_rank0", "everywhere",
           "broadcast_object", "gather_to_rank0", "agreed_signal", "leave"]

T = TypeVar("T")

class RankFailed(RuntimeError):
    """Another rank failed; the message is that rank's error."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before the group exists."""
    return int(os.environ.get("RANK", "0"))


def join(device: str) -> DistContext:
    """Join torchrun's process group (NCCL for CUDA env devices, gloo on CPU); a single-process
    context outside torchrun. Non-zero ranks drop Python warnings: rank 0 shows the same ones."""
    if not launched_by_torchrun():
        return DistContext()
    from .distributed import init_from_env

    ctx = init_from_env(device)
    if not ctx.is_main:
        warnings.simplefilter("ignore")
    return ctx


def _attempt(fn: Callable[[], T]):
    try:
        return fn(), None
    except Exception as exc:  # reported to every rank below
        return None, exc


def _payload(exc: Optional[BaseException]) -> Optional[tuple]:
    if exc is None:
        return None
    # Bad input is re-raised as ConfigError on the other ranks, so every rank exits 2.
    return is_user_error(exc), first_line(exc)


def _raise_from(rank: int, payload: tuple) -> None:
    is_input, text = payload
    prefix = "" if rank == 0 else f"rank {rank}: "
    raise (ConfigError if is_input else RankFailed)(prefix + text)


def on_rank0(ctx: DistContext, fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only; every rank returns its (picklable) result or raises its error."""
    if not ctx.enabled:
        return fn()
    box: List[Any] = [None]
    if ctx.is_main:
        value, exc = _attempt(fn)
        box = [(value, _payload(exc))]
        dist.broadcast_object_list(box, src=0)
        if exc is not None:
            raise exc
        return value
    dist.broadcast_object_list(box, src=0)
    value, payload = box[0]
    if payload is not None:
        _raise_from(0, payload)
    return value


def everywhere(ctx: DistContext, fn: Callable[[], T], *, rank0_first: bool = False) -> T:
    """`fn()` on every rank (on rank 0 first with `rank0_first`, e.g. so that missing teachers are
    trained into the shared cache once); if it fails on any rank, it raises on every rank.
    `fn` must not make collective calls (a failing rank would leave the others waiting there)."""
    if not ctx.enabled:
        return fn()
    if rank0_first:
        first: List[Any] = [None]
        if ctx.is_main:
            value, exc = _attempt(fn)
            first = [_payload(exc)]
        dist.broadcast_object_list(first, src=0)
        if first[0] is not None:
            if ctx.is_main:
                raise exc
            _raise_from(0, first[0])
        if not ctx.is_main:
            value, exc = _attempt(fn)
    else:
        value, exc = _attempt(fn)
    outcomes: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(outcomes, _payload(exc))
    for rank, payload in enumerate(outcomes):
        if payload is not None:
            if rank == ctx.rank:
                raise exc
            _raise_from(rank, payload)
    return value


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_rank0(ctx: DistContext, obj: Any) -> Optional[list]:
    """Every rank's `obj` in rank order on rank 0; None on the other ranks."""
    if not ctx.enabled:
        return [obj]
    out: Optional[list] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def agreed_signal(ctx: DistContext, signum: Optional[int]) -> Optional[int]:
    """The stop signal any rank has received (the largest number), on every rank: torchrun
    forwards SIGTERM to all ranks but not at the same instant, and a rank that stopped alone
    would leave the others waiting in the next env step."""
    if not ctx.enabled:
        return signum
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([signum or 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    value = int(t.item())
    return value or None

