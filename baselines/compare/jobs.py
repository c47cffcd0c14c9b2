"""The job list of a comparison, (policy, seed) pairs in seed-major order, and its shards."""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from .options import CompareError

__all__ = ["Job", "job_list", "parse_shard", "shard_bounds", "shard_jobs", "shard_of"]

Job = Tuple[str, int]
"""(policy, evaluation seed)."""


def job_list(policies: Sequence[str], seeds: Sequence[int]) -> List[Job]:
    """Every (policy, seed) pair, seed-major: an interrupted or partial comparison still has
    complete seeds (paired across policies)."""
    return [(p, int(s)) for s in seeds for p in policies]


def parse_shard(text: str) -> Tuple[int, int]:
    """"I/N" -> (I, N) with 1 <= I <= N; a one-line `CompareError` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    expected = "expected I/N with 1 <= I <= N (1-based: --shard 1/4 ... --shard 4/4)"
    if not match:
        raise CompareError(f"--shard: {expected}, got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise CompareError(f"--shard: {expected}, got {text!r}")
    return index, count


def shard_bounds(n_jobs: int, shard: Tuple[int, int]) -> Tuple[int, int]:
    """[start, end) of shard (I, N) in a job list of `n_jobs`: contiguous, sizes differ by <= 1."""
    index, count = shard
    return (index - 1) * n_jobs // count, index * n_jobs // count


def shard_jobs(jobs: Sequence[Job], shard: Optional[Tuple[int, int]]) -> List[Job]:
    """The slice of `jobs` that shard (I, N) runs (all of them for None)."""
    if shard is None:
        return list(jobs)
    start, end = shard_bounds(len(jobs), shard)
    return list(jobs[start:end])


def shard_of(position: int, n_jobs: int, count: int) -> int:
    """The 1-based shard of N = `count` that runs job `position` of `n_jobs`."""
    return next(i for i in range(1, count + 1) if position < shard_bounds(n_jobs, (i, count))[1])
