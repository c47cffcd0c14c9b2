"""One timed env, driven over stdin by `benchmarks.speedup` (run as a script of its own).

    python -P benchmarks/step_worker.py '{"overrides": {...}, "warmup": 20, "threads": 1}'

It imports `mtkd_env` from `PYTHONPATH`, so the same worker times any code tree that has the env
(the code under test, or a baseline checked out beside it): it builds
`MultiTeacherKDEnv(**overrides)`, resets it with seed 0, runs `warmup` steps, prints "ready", then
answers each line "N" on stdin with the wall milliseconds per step of the next N `env.step` calls
(a fixed sequence of 64 uniformly drawn actions, seed 0, cycled; an episode's end resets untimed)
and exits on "quit". Only `mtkd_env`, numpy and torch are imported, so that it runs on older trees.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main() -> int:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec.get("threads", 1)))
    from mtkd_env.env import MultiTeacherKDEnv

    env = MultiTeacherKDEnv(**spec["overrides"])
    actions = np.random.default_rng(0).uniform(-1, 1, (64, *env.action_space.shape)).astype(np.float32)
    env.reset(seed=0)
    state = {"i": 0}

    def run(n: int) -> float:
        elapsed = 0.0
        for _ in range(n):
            t0 = time.perf_counter()
            terminated = env.step(actions[state["i"] % len(actions)])[2]
            elapsed += time.perf_counter() - t0
            state["i"] += 1
            if terminated:
                env.reset()
        return elapsed * 1000.0 / n

    run(int(spec.get("warmup", 20)))
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(f"{run(int(line)):.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
