"""Env-steps/s of the vector env modes against one single env in the same process.

    python -m benchmarks.vector_env [--config digits|paper-cifar|tiny] [--k 1 2 4 8 16] [--device auto]
                                    [--modes batched sync async] [--shared-batches] [--vectorize auto|grouped|vmap|rows ...]
                                    [--amp bf16] [--channels-last] [--cudnn-benchmark] [--cache-teacher-outputs]
                                    [--json FILE]

For every K it builds, in this process, one `MultiTeacherKDEnv` (the reference) and a vector env
of K sub-envs per mode:
  batched  `gym.make_vec(..., vectorization_mode="vector_entry_point")`: K students in one process,
           one batched forward/backward per step (`mtkd_env.vector_env`);
  sync     Gymnasium's `SyncVectorEnv`: K single envs stepped in turn in this process;
  async    Gymnasium's `AsyncVectorEnv`: K worker processes (spawned, one torch thread each),
           only for K <= --async-max-k (default: the number of CPU cores on the CPU).
Each round runs a block of steps of the single env and of every mode in turn (interleaved, so
drift in machine load hits all alike); a mode's figure is the median over rounds of its env-steps/s
(K sub-env steps per vector step), and its ratio is to the single env's median. Episodes run as
configured (the embedded default: 180 steps) with autoreset, so resets and end-of-episode
evaluations are part of the steady state. The load average before and after is reported: time on
an otherwise idle machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import field
from typing import Annotated, Callable, Dict, List, Literal, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the async workers

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from mtkd_env import ENV_ID, EnvConfig  # noqa: E402
from mtkd_env.env import MultiTeacherKDEnv  # noqa: E402
from mtkd_env.runtime.cli import run_cli  # noqa: E402
from mtkd_env.runtime.options import Cli, DeviceName, settings  # noqa: E402

from .cli import parse_flags, write_json  # noqa: E402
from .step_overhead import CONFIG_NAMES, CONFIGS  # noqa: E402

MODES = ("batched", "sync", "async")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def single_step_fn(env: MultiTeacherKDEnv) -> Callable[[], None]:
    action = np.zeros(env.action_space.shape, dtype=np.float32)  # softmax(0): equal weights
    env.reset(seed=0)

    def step() -> None:
        if env.step(action)[2]:
            env.reset()

    return step


def vector_step_fn(venv) -> Callable[[], None]:
    actions = np.zeros(venv.action_space.shape, dtype=np.float32)
    venv.reset(seed=0)

    def step() -> None:
        venv.step(actions)  # NEXT_STEP autoreset

    return step


VECTORIZE = {"auto": None, "grouped": "grouped", "vmap": "vmap", "rows": "rows"}


def make_vector(mode: str, k: int, cfg: EnvConfig, shared: bool, vectorize: str = "auto"):
    if mode == "batched":
        return gym.make_vec(ENV_ID, num_envs=k, vectorization_mode="vector_entry_point", config=cfg,
                            shared_batches=shared, vectorize=VECTORIZE[vectorize])
    if mode == "sync":
        return gym.make_vec(ENV_ID, num_envs=k, vectorization_mode="sync", config=cfg)
    return gym.make_vec(ENV_ID, num_envs=k, vectorization_mode="async", config=cfg,
                        vector_kwargs={"context": "spawn"})


def time_rounds(steps: Dict[str, Callable[[], None]], sizes: Dict[str, int], device: torch.device, warmup: int,
                rounds: int, per_block: int) -> Dict[str, float]:
    """Median env-steps/s of each entry over interleaved rounds."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    rates: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_block):
                fn()
            _sync(device)
            rates[name].append(sizes[name] * per_block / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def arms(modes: List[str], vectorize: List[str]) -> List[tuple]:
    """(arm name, mode, vectorize) per timed arm: one batched arm per `vectorize` value, named
    "batched" when there is one and "batched-<value>" when several are compared in one run."""
    out = []
    for m in modes:
        if m != "batched":
            out.append((m, m, "auto"))
        else:
            out += [("batched" if len(vectorize) == 1 else f"batched-{v}", m, v) for v in vectorize]
    return out


def run(config: str, ks: List[int], modes: List[str], device: str, shared: bool, warmup: int, rounds: int,
        per_block: int, async_max_k: int, cache_dir, vectorize: Optional[List[str]] = None,
        fast: Optional[dict] = None) -> dict:
    vectorize = vectorize or ["auto"]
    base = dict(CONFIGS[config], device=device, show_progress=False, **(fast or {}))
    if cache_dir:
        base["teacher_cache_dir"] = cache_dir
    cfg = EnvConfig(**base)
    single = MultiTeacherKDEnv(cfg)
    dev = single.engine.device
    rows = []
    for k in ks:
        venvs = {name: make_vector(m, k, cfg, shared, v) for name, m, v in arms(modes, vectorize)
                 if m != "async" or k <= async_max_k}
        steps = {"single": single_step_fn(single), **{m: vector_step_fn(v) for m, v in venvs.items()}}
        sizes = {"single": 1, **{m: k for m in venvs}}
        rates = time_rounds(steps, sizes, dev, warmup, rounds, per_block)
        for mode in venvs:
            rows.append({"k": k, "mode": mode, "env_steps_per_s": rates[mode],
                         "single_env_steps_per_s": rates["single"], "ratio_to_single": rates[mode] / rates["single"]})
        for v in venvs.values():
            v.close()
    by = {(r["mode"], r["k"]): r for r in rows}
    for r in rows:  # batched (or async) against K single envs stepped in turn, measured in the same rounds
        if r["mode"] != "sync" and ("sync", r["k"]) in by:
            r["ratio_to_sync"] = r["env_steps_per_s"] / by[("sync", r["k"])]["env_steps_per_s"]
    return {"config": config, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "shared_batches": shared, "vectorize": vectorize, **(fast or {}), "rows": rows}


@settings(label="flag")
class VectorEnvBenchmark:
    """The flags of `python -m benchmarks.vector_env`."""

    config: Literal[CONFIG_NAMES] = "digits"
    """Benchmark configuration (`benchmarks.step_overhead.CONFIGS`)."""
    k: Annotated[List[Annotated[int, Field(ge=1)]], Field(min_length=1), Cli(item="K")] = field(
        default_factory=lambda: [1, 2, 4, 8, 16])
    """Sub-env counts K to time."""
    modes: Annotated[List[Literal[MODES]], Field(min_length=1), Cli(item="mode")] = field(
        default_factory=lambda: list(MODES))
    """Vector-env modes to time."""
    device: DeviceName = "auto"
    """Torch device: auto, cpu, cuda or cuda:N."""
    shared_batches: bool = False
    """Batched mode: every sub-env draws the same batches."""
    vectorize: Annotated[List[Literal[tuple(VECTORIZE)]], Field(min_length=1), Cli(item="mode")] = field(
        default_factory=lambda: ["auto"])
    """Batched mode: students' forward as one grouped network, one vmap, row by row, or by device
    (auto); several values time one batched arm each in the same rounds."""
    amp: Literal["none", "bf16"] = "none"
    """Mixed precision of the forward passes on CUDA."""
    channels_last: bool = False
    """channels_last memory format."""
    cudnn_benchmark: bool = False
    """Let cuDNN time its convolution algorithms (CUDA)."""
    cache_teacher_outputs: bool = False
    """Every arm reuses the teachers' outputs computed once (equal teacher work in every mode)."""
    warmup: Annotated[int, Field(ge=0)] = 5
    """Untimed vector steps first."""
    rounds: Annotated[int, Field(ge=1)] = 5
    """Timed rounds over the modes."""
    per_block: Annotated[int, Field(ge=1)] = 20
    """Vector steps per block."""
    async_max_k: Optional[Annotated[int, Field(ge=1)]] = None
    """Largest K for async workers (default: CPU cores on the CPU, 8 on a GPU)."""
    teacher_cache_dir: Optional[str] = None
    """Teacher cache folder."""
    json: Annotated[Optional[str], Cli(metavar="FILE")] = None
    """Write the figures to this JSON file."""


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args, _ = parse_flags(VectorEnvBenchmark, "python -m benchmarks.vector_env", __doc__, argv)
    torch.set_num_threads(1)  # every mode on one thread, as the async workers (OMP_NUM_THREADS=1 above)
    on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    async_max = args.async_max_k if args.async_max_k is not None else (8 if on_gpu else os.cpu_count() or 1)
    load_before = os.getloadavg()
    t0 = time.time()
    out = run(args.config, args.k, args.modes, args.device, args.shared_batches, args.warmup, args.rounds,
              args.per_block, async_max, args.teacher_cache_dir, args.vectorize,
              {"amp": args.amp, "channels_last": args.channels_last, "cudnn_benchmark": args.cudnn_benchmark,
               "cache_teacher_outputs": args.cache_teacher_outputs})
    out.update(load_before=list(load_before), load_after=list(os.getloadavg()), wall_s=round(time.time() - t0, 1),
               command=" ".join(["python -m benchmarks.vector_env"] + list(sys.argv[1:] if argv is None else argv)))
    print(f"{out['config']} on {out['device_name']} (load average {load_before[0]:.2f} -> {out['load_after'][0]:.2f})")
    print(f"{'mode':8s} {'K':>3s} {'env-steps/s':>12s} {'single':>9s} {'x single':>9s} {'x sync':>8s}")
    for r in out["rows"]:
        vs_sync = f"{r['ratio_to_sync']:8.2f}" if "ratio_to_sync" in r else f"{'':8s}"
        print(f"{r['mode']:8s} {r['k']:3d} {r['env_steps_per_s']:12.1f} {r['single_env_steps_per_s']:9.1f} "
              f"{r['ratio_to_single']:9.2f} {vs_sync}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
