"""Env steps per second of this code against another tree of it (a baseline), measured in one run.

    python -m benchmarks.speedup --baseline DIR [--variants default ppo-shipped] [--blocks 9]
                                 [--per-block 30] [--warmup 20] [--threads 1] [--env KEY=VALUE ...]
                                 [--json FILE]

`DIR` is a checkout of the baseline code (e.g. `git worktree add ../base <commit>`). For every
variant it starts one long-lived worker per code tree (`benchmarks/step_worker.py` with `PYTHONPATH`
set to the tree) and, for "default", a third on this tree with `cache_teacher_outputs=false` (what
the step gains besides the teacher cache). Each worker builds its env, warms up, then the workers
are timed in interleaved blocks — every block runs `per_block` steps of each worker in turn, the
others idle — so that drift in machine load hits all alike. It prints the median ms/step and
steps/s of every worker (and its best block: on a machine shared with other jobs the least
disturbed one) and, per variant, the speed-up (baseline ms / this tree's ms) of both.

Variants: "default" is the embedded default env (`EnvConfig()`: digits, teachers cnn,
tiny_resnet, mlp=noisy, student tiny_cnn, reward probe_loss_drop); "ppo-shipped" the env of the
shipped PPO (`env_kwargs` of `agents/hyperparams/ppo.yml`: reward twin_val_loss with its lockstep
twin student). Both with `epochs=1000` (steady state: no episode ends in the timed steps) and
`device=cpu`; `--env` adds overrides to every worker.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import field
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional

from pydantic import Field

from mtkd_env.config import parse_overrides
from mtkd_env.runtime.cli import run_cli
from mtkd_env.runtime.errors import UserError
from mtkd_env.runtime.options import Cli, DeviceName, settings

from .cli import parse_flags, write_json

HERE = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "step_worker.py"
VARIANTS = ("default", "ppo-shipped")


def variant_overrides(name: str) -> dict:
    """The env overrides of a variant (before `--env`)."""
    base = {"epochs": 1000.0, "show_progress": False}
    if name == "ppo-shipped":
        from agents.hyperparams import default_hyperparams

        base.update(default_hyperparams("ppo").get("env_kwargs", {}))
    return base


class Worker:
    """A `step_worker.py` process timing one env of one code tree."""

    def __init__(self, label: str, tree: Path, overrides: dict, warmup: int, threads: int) -> None:
        self.label = label
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), WANDB_MODE="disabled")
        spec = json.dumps({"overrides": overrides, "warmup": warmup, "threads": threads})
        self.proc = subprocess.Popen([sys.executable, "-P", str(WORKER), spec], cwd=str(tree), env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.times: List[float] = []

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker {self.label} failed to start (exit {self.proc.wait()}); see its stderr above")

    def block(self, steps: int) -> None:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        self.times.append(float(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


@settings(label="flag")
class SpeedupBenchmark:
    """The flags of `python -m benchmarks.speedup`."""

    baseline: Annotated[str, Cli(metavar="DIR")]
    """Checkout of the baseline code (its root holds `mtkd_env/`)."""
    variants: List[Literal[VARIANTS]] = field(default_factory=lambda: list(VARIANTS))
    """Envs to time: "default", "ppo-shipped"."""
    warmup: Annotated[int, Field(ge=0)] = 20
    """Untimed steps of each worker first."""
    blocks: Annotated[int, Field(ge=1)] = 9
    """Timed blocks."""
    per_block: Annotated[int, Field(ge=1)] = 30
    """Steps per worker and block."""
    threads: Annotated[int, Field(ge=1)] = 1
    """Torch (and OpenMP) threads of every worker."""
    env: Annotated[List[str], Cli(metavar="KEY=VALUE")] = field(default_factory=list)
    """Env config overrides for every worker."""
    device: DeviceName = "cpu"
    """Device of every env."""
    json: Annotated[Optional[str], Cli(metavar="FILE")] = None
    """Write the figures to this JSON file."""


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args, _ = parse_flags(SpeedupBenchmark, "python -m benchmarks.speedup", __doc__, argv)
    baseline = Path(args.baseline).resolve()
    if not (baseline / "mtkd_env" / "env.py").is_file():
        raise UserError(f"--baseline: expected a checkout of this project (with mtkd_env/env.py), got {args.baseline!r}")
    extra = dict(parse_overrides(args.env), device=args.device)
    workers: Dict[str, Worker] = {}
    try:
        for variant in args.variants:
            overrides = {**variant_overrides(variant), **extra}
            started = [Worker(f"{variant}/baseline", baseline, overrides, args.warmup, args.threads),
                       Worker(f"{variant}/this", HERE, overrides, args.warmup, args.threads)]
            if variant == "default":
                started.append(Worker(f"{variant}/this, no teacher cache", HERE,
                                      {**overrides, "cache_teacher_outputs": False}, args.warmup, args.threads))
            workers.update((w.label, w) for w in started)
            for w in started:
                w.wait_ready()  # one variant's workers warm up together, then idle until timed
        order = list(workers.values())
        for b in range(args.blocks):
            for w in order[b % len(order):] + order[:b % len(order)]:  # rotate who goes first
                w.block(args.per_block)
    finally:
        for w in workers.values():
            w.close()
    rows = {label: {"ms_per_step": statistics.median(w.times), "steps_per_s": 1000.0 / statistics.median(w.times),
                    "min_ms_per_step": min(w.times), "block_ms": w.times} for label, w in workers.items()}
    print(f"{'worker':36s} {'ms/step':>9s} {'steps/s':>9s} {'best block ms/step':>19s}")
    for label, r in rows.items():
        print(f"{label:36s} {r['ms_per_step']:9.3f} {r['steps_per_s']:9.1f} {r['min_ms_per_step']:19.3f}")
    speedup = {}
    for variant in args.variants:
        base = rows[f"{variant}/baseline"]["ms_per_step"]
        speedup[variant] = base / rows[f"{variant}/this"]["ms_per_step"]
        best = rows[f"{variant}/baseline"]["min_ms_per_step"] / rows[f"{variant}/this"]["min_ms_per_step"]
        speedup[f"{variant}, best blocks"] = best
        line = f"speed-up {variant}: {speedup[variant]:.3f}x (best blocks {best:.3f}x)"
        if variant == "default":
            speedup["default, no teacher cache"] = base / rows["default/this, no teacher cache"]["ms_per_step"]
            line += f" (without the teacher cache {speedup['default, no teacher cache']:.3f}x)"
        print(line)
    write_json(args.json, {"speedup": speedup, "results": rows, "baseline": str(baseline), "this": str(HERE),
                           "blocks": args.blocks, "per_block": args.per_block, "threads": args.threads,
                           "env": extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
