"""torch.distributed support: one distillation spread over the processes `torchrun` starts.

Design (one agent, one decision):
- `EnvConfig.batch_size` is the *global* batch; each of the W ranks draws a disjoint slice of
  B / W samples of every global batch from the same seeded permutation, so a W-process run sees
  exactly the samples of a 1-process run with the same config.
- The student and projectors are wrapped in `DistributedDataParallel`; teachers are replicated and
  frozen (no wrapper: they take no gradient).
- Teacher granularity: per-rank batch statistics are averaged over ranks (all ranks hold equal
  shards), so every rank builds the same global observation and reward.
- Sample granularity: per-sample states and losses are all-gathered into the global (B, F) state,
  identical on every rank; the policy acts on the whole global batch.
- The action used is rank 0's (broadcast inside `env.step`), so every rank applies the same
  weights even if agent replicas drift; each rank takes the rows of its own samples.
- Evaluations (probe loss, validation and test accuracy) are rank 0's, broadcast: with BatchNorm
  each rank's running statistics come from its own shards, and rank 0's student is the one saved.
- Only rank 0 should log, print and write files (`is_main()`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistContext", "context", "is_main", "init_from_env"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    """A process group is initialised (also with one process, e.g. a 1-GPU torchrun smoke run)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average of `t` over ranks (identity without distribution)."""
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of `t` on every rank (identity without distribution)."""
        if not self.enabled:
            return t
        t = t.contiguous().clone()
        dist.broadcast(t, src=0)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (n, ...) tensor along dim 0 in rank order -> (W * n, ...)."""
        if not self.enabled:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def broadcast_array(self, a: np.ndarray, device: torch.device) -> np.ndarray:
        """Rank 0's copy of a float array, on every rank."""
        if not self.enabled:
            return a
        t = torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64), device=device)
        dist.broadcast(t, src=0)
        return t.cpu().numpy()


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group `torchrun` describes (RANK/WORLD_SIZE/LOCAL_RANK); NCCL on GPUs,
    gloo on CPU. Without those variables, a single-process context and no group."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, enabled=True)


def context() -> DistContext:
    """The current process's context (single-process unless a group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")), enabled=True)
    return DistContext()


def is_main() -> bool:
    return context().is_main


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank uses its own GPU (cuda:LOCAL_RANK) when the config names CUDA."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def leave() -> None:
    """Leave the process group together: a rank that tears its group down while another still
    talks to it can abort in gloo's C++ threads at exit."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(ctx: Optional[DistContext] = None) -> None:
    ctx = ctx or context()
    if ctx.enabled:
        dist.barrier()
