"""Where a list of independent jobs runs: a registry of backends by name (`BACKENDS`).

    options = ExecutorOptions(backend="ray", address="auto", ray_num_gpus=0.25)
    for task, result, error in execute(fn, tasks, options, workers=1):   # as the jobs finish
        ...

- "local" (the default): in this process for `workers` = 1 (or a single task), else `workers`
  spawned processes on this machine, each with its share of the CPU threads
  (`resources.configure_threads`);
- "ray": one Ray task per job on an existing Ray cluster (`--address auto`, `HOST:PORT`,
  `ray://HOST:10001`) or on a Ray instance started on this machine for the run (`--address local`),
  each task reserving `ray_num_cpus` CPUs and `ray_num_gpus` GPUs (fractions share a GPU).

`fn(task)` must be a module-level function and `task` and its result picklable. One failing job
does not stop the others: it is yielded with its exception (the job's own, not Ray's wrapper).

Ray jobs and files. A job's result travels back to the driver as a Ray object, so the driver writes
every output file, as with the local backend. What a job *reads* (datasets, the teacher cache,
trained agents, any path in its arguments) it reads on the node that runs it: the job carries the
driver's working directory and its `MTKD_*` variables (e.g. `MTKD_CACHE_DIR`) and runs in that
directory, so relative and absolute paths mean what they mean on the driver, provided every node
sees those paths (a shared filesystem at the same mount point) and has this package installed.
A job that finds no such directory fails with a one-line error naming the node.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

from pydantic import Field

from .errors import ConfigError, first_line
from .options import Cli, settings
from .resources import THREADS_VARIABLE, configure_threads

__all__ = ["BACKENDS", "ExecutorOptions", "Outcome", "execute", "RAY_INSTALL"]

Outcome = Tuple[Any, Optional[Any], Optional[BaseException]]
"""(task, result, error) of one finished job: result None when error is not."""

Backend = Callable[[Callable[[Any], Any], List[Any], "ExecutorOptions", int], Iterator[Outcome]]

RAY_INSTALL = "pip install 'mtkd-env[ray]'"
"""How to get the optional Ray dependency (setup.cfg's `ray` extra)."""


def _local(fn: Callable[[Any], Any], tasks: List[Any], options: "ExecutorOptions", workers: int) -> Iterator[Outcome]:
    """In this process for one worker (or one task), else `workers` spawned processes."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                yield task, fn(task), None
            except Exception as exc:  # one broken job must not lose the others
                yield task, None, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: forked workers cannot use CUDA and would inherit the parent's torch threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_local_worker,
                             initargs=(workers, os.getpid())) as pool:
        futures = {pool.submit(fn, task): task for task in tasks}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _local_worker(workers: int, parent: int) -> None:
    """A local worker's start: the thread default of `workers` processes, and an exit as soon as
    the parent process is gone. The pool queues every job up front, so a worker whose parent was
    killed (SIGKILL, or SIGTERM to the parent alone) would otherwise go on training students for
    nobody until the queue is empty."""
    import threading
    import time

    configure_threads(workers)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _ray(fn: Callable[[Any], Any], tasks: List[Any], options: "ExecutorOptions", workers: int) -> Iterator[Outcome]:
    """One Ray task per job; see the module docstring for what a task may read."""
    ray = _import_ray()
    started = _connect(ray, options.address)
    try:
        _check_fits(ray, options)
        remote = ray.remote(_in_driver_dir).options(num_cpus=options.ray_num_cpus, num_gpus=options.ray_num_gpus,
                                                     **_runtime_env())
        refs = {remote.remote(fn, task, os.getcwd(), options.ray_num_cpus): task for task in tasks}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    yield refs[done[0]], ray.get(done[0]), None
                except ray.exceptions.RayTaskError as exc:  # the job raised: hand on its own exception
                    yield refs[done[0]], None, exc.cause if isinstance(exc.cause, BaseException) else exc
                except ray.exceptions.RayError as exc:      # a worker or node died, the task was cancelled
                    yield refs[done[0]], None, exc
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def _in_driver_dir(fn: Callable[[Any], Any], task: Any, cwd: str, cpus: float) -> Any:
    """Run `fn(task)` on a Ray worker in the driver's working directory `cwd` (a Ray worker's own
    directory is the cluster's, not the driver's), with `cpus` torch threads (`MTKD_NUM_THREADS`
    wins): Ray sets OMP_NUM_THREADS per task, but a reused worker keeps the thread count torch
    read when it was first imported."""
    if os.environ.get(THREADS_VARIABLE, "").strip():
        configure_threads()
    else:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
    if not os.path.isdir(cwd):
        raise ConfigError(f"the driver's working directory {cwd!r} does not exist on Ray node {socket.gethostname()}; "
                          f"every node needs the driver's files at the same paths (a shared filesystem)")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return fn(task)
    finally:
        os.chdir(before)


def _runtime_env() -> Dict[str, Any]:
    """The driver's `MTKD_*` variables (cache folder, thread count) for every task."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MTKD_")}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--backend ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _connect(ray: Any, address: Optional[str]) -> bool:
    """Join the cluster at `address` (None: "auto"); True if this call opened the session (and so
    closes it). A session this process opened already (`ray.init` in a script) is used as it is."""
    if ray.is_initialized():
        return False
    address = address or "auto"
    kwargs = {"include_dashboard": False} if address == "local" else {}  # only a new instance takes it
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError) as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({first_line(exc)}); start one with "
                          f"`ray start --head`, or use --address local to start Ray on this machine") from None
    return True


def _check_fits(ray: Any, options: "ExecutorOptions") -> None:
    """A task larger than every node would wait forever: refuse it up front."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, need, flag in (("CPU", options.ray_num_cpus, "--ray-num-cpus"), ("GPU", options.ray_num_gpus,
                                                                            "--ray-num-gpus")):
        most = max((float(n.get(key, 0)) for n in nodes), default=0.0)
        if need > most:
            raise ConfigError(f"{flag} {need:g}: no node of the Ray cluster has that many {key}s (the largest has "
                              f"{most:g}), so no task could start; lower {flag} or add larger nodes")


BACKENDS: Dict[str, Backend] = {"local": _local, "ray": _ray}
"""Backend name -> runner of (fn, tasks, options, workers)."""

_RAY_FIELDS = {"address": None, "ray_num_cpus": 1.0, "ray_num_gpus": 0.0}
"""The options of the ray backend, with their defaults."""


@settings(label="flag")
class ExecutorOptions:
    """Where the jobs of a command run: `--backend local` (worker processes on this machine) or
    `--backend ray` (a Ray cluster)."""

    backend: Literal[tuple(BACKENDS)] = "local"
    """Where the runs go: "local" (this machine; --jobs worker processes) or "ray" (one Ray task per
    run on the cluster at --address; needs `pip install 'mtkd-env[ray]'`)."""
    address: Annotated[Optional[str], Cli(metavar="ADDR", help_default="auto")] = None
    """--backend ray: the cluster, "auto" (the one `ray start` runs on this machine, or $RAY_ADDRESS),
    "HOST:PORT", "ray://HOST:10001" (Ray Client), or "local" (start Ray on this machine for this command)."""
    ray_num_cpus: Annotated[float, Field(gt=0), Cli(metavar="N")] = 1.0
    """--backend ray: CPUs each run reserves (and its torch threads: the whole part, at least 1)."""
    ray_num_gpus: Annotated[float, Field(ge=0), Cli(metavar="N")] = 0.0
    """--backend ray: GPUs each run reserves; a fraction shares one GPU (0.25: four runs per GPU)."""

    def __post_init__(self) -> None:
        if self.backend != "ray":
            given = [name for name, default in _RAY_FIELDS.items() if getattr(self, name) != default]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ConfigError(f"{flag} is an option of --backend ray, got --backend {self.backend}")
        else:
            _import_ray()  # a missing Ray is bad input: say so before anything runs

    def check_workers(self, workers: int, flag: str = "--jobs") -> None:
        """`workers` local processes make sense for the local backend only."""
        if self.backend != "local" and workers != 1:
            raise ConfigError(f"{flag} {workers}: {flag} sets local worker processes; with --backend {self.backend} "
                              f"the cluster and --ray-num-cpus/--ray-num-gpus decide how many runs go at once")


def execute(fn: Callable[[Any], Any], tasks: Sequence[Any], options: Optional[ExecutorOptions] = None,
            workers: int = 1) -> Iterator[Outcome]:
    """Yield (task, result, error) for every task as its job finishes, on the backend of `options`
    (default: local); `workers` is the local backend's process count."""
    options = options or ExecutorOptions()
    options.check_workers(workers)
    return BACKENDS[options.backend](fn, list(tasks), options, workers)
