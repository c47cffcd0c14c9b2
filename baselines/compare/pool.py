"""Running evaluation tasks: in this process for one job, else in spawned worker processes."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

__all__ = ["execute"]


def execute(tasks: list, jobs: int) -> Iterator[Tuple[Any, Optional[dict], Optional[BaseException]]]:
    """Yield (task, result, error) as runs finish; in-process for one job, else spawned workers."""
    from .worker import init_worker, run_task

    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                yield task, run_task(task), None
            except Exception as exc:  # one broken run must not lose the others
                yield task, None, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: forked workers cannot use CUDA and would inherit the parent's torch threads.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(jobs,)) as pool:
        futures = {pool.submit(run_task, task): task for task in tasks}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
