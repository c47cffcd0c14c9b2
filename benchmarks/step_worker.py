"""One timed env, driven over stdin by `benchmarks.speedup` (run as a script of its own).

    python -P benchmarks/step_worker.py '{"overrides": {...}, "warmup": 20, "threads": 1}'

It imports `mtkd_env` from `PYTHONPATH`, so the same worker times any code tree that has the env
(the code under test, or a baseline checked out beside it): it builds
`MultiTeacherKDEnv(**overrides)`, resets it with seed 0, runs `warmup` steps, prints "ready", then
answers each line "N" on stdin with the wall milliseconds per step of the next N `env.step` calls
(a fixed sequence of 64 uniformly drawn actions, seed 0, cycled; an episode's end resets untimed)
and exits on "quit". Only `mtkd_env`, numpy and torch are imported, so that it runs on older trees.

With `"profile": N` in the spec it profiles N steps after the warm-up instead (`torch.profiler`,
CPU) and prints the table of the top `rows` (default 15) operators by `sort` (default
"self_cpu_time_total"):

    OMP_NUM_THREADS=1 PYTHONPATH=<tree> python -P benchmarks/step_worker.py \
        '{"overrides": {"epochs": 1000, "show_progress": false, "device": "cpu"}, "profile": 100}'
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
    if spec.get("profile"):  # a torch.profiler table of that many steps instead of the timing loop
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ms = run(int(spec["profile"]))
        print(f"{ms:.3f} ms/step under the profiler")
        print(prof.key_averages().table(sort_by=spec.get("sort", "self_cpu_time_total"),
                                        row_limit=int(spec.get("rows", 15)), max_name_column_width=48))
        return 0
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(f"{run(int(line)):.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
