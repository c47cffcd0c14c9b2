"""How well each per-sample credit (`DistillationEngine.kd_credit`) points at a sample's right teacher.

    python -m benchmarks.credit_signal --scenario specialists --seed 8 [--every 3] [--json FILE]
        [--agent RUN_DIR ...]

One AVER episode (equal weights) of the scenario — or, with `--agent`, one episode weighted by each
trained agent — and every `every` steps both credits of the step's
batch, c (B, M) for target "probe" (first-order probe-CE drop) and "label" (first-order drop of the
sample's own CE), are compared with the teacher of lowest CE on each sample (on `specialists`, the
expert of the sample's class group). Per third of the episode and target:

- `expert_dev`: the mean within-row deviation c[i, m*] − mean_m c[i, m] of that teacher m*, in units
  of the sd of all within-row deviations (> 0: the credit favours it);
- `expert_first`: the fraction of samples whose highest credit is that teacher's (chance 1/M);
- `corr_neg_ce`: the correlation of the within-row deviations of c and of −(teacher CE);
- `right_weight`: the mean logit weight the episode's policy gives that teacher (AVER: 1/M).

A credit from which a policy can learn per-sample routing ranks that teacher first; the rewards
`kd_credit` and `kd_label_credit` pay Σ (w − 1/M)·c, so what they teach is what this measures.
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from mtkd_env.config import EnvConfig
from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import ConfigError, unknown_name
from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import SCENARIOS

__all__ = ["credit_signal", "main"]

TARGETS = ("probe", "label")


def _within(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=1, keepdims=True)


def credit_signal(config: EnvConfig, seed: int, every: int = 3, agent: Optional[str] = None) -> dict:
    """The figures of the module docstring for one episode of `config` from `seed`: AVER's, or the
    trained agent's at `agent` (a run directory or model file)."""
    from mtkd_env.env import MultiTeacherKDEnv

    policy = None
    if agent is not None:
        from agents.api import load_policy

        policy = load_policy(agent)
        config = policy.make_env_config(config)
    env = MultiTeacherKDEnv(config)
    obs, _ = env.reset(seed=seed)
    m = env.num_teachers
    samples: Dict[str, List[np.ndarray]] = {t: [] for t in TARGETS}
    ce, step_of, weight = [], [], []
    terminated, step = False, 0
    while not terminated:
        if policy is None:
            w_logit, w_feat = np.full(m, 1.0 / m), None
        else:
            w_logit, w_feat = env.action_to_weights(policy.predict(obs)[0])
        if step % every == 0:
            for target in TARGETS:
                samples[target].append(env.engine.kd_credit(target).double().cpu().numpy())
            ce.append(env.engine.batch.teacher_ce.double().cpu().numpy())
            step_of.append(np.full(len(ce[-1]), step))
            weight.append(np.broadcast_to(w_logit, ce[-1].shape).astype(np.float64))
        obs, _, terminated, _, _ = env.step_weights(w_logit, w_feat)
        step += 1
    weights = np.concatenate(weight)
    teacher_ce, steps = np.concatenate(ce), np.concatenate(step_of)
    right = teacher_ce.argmin(axis=1)
    thirds = [(0, step // 3), (step // 3, 2 * step // 3), (2 * step // 3, step)]
    phases = [(steps >= lo) & (steps < hi) for lo, hi in thirds]
    on_right = weights[np.arange(len(right)), right]
    out: dict = {"scenario": config.scenario, "seed": seed, "agent": agent, "steps": step, "every": every,
                 "teachers": m, "phases": [list(p) for p in thirds],
                 "right_weight": [float(on_right[keep].mean()) for keep in phases], "targets": {}}
    for target in TARGETS:
        dev = _within(np.concatenate(samples[target]))
        rows = []
        for (lo, hi), keep in zip(thirds, phases):
            d, r = dev[keep], right[keep]
            scale = d.std() or 1.0
            rows.append({"steps": [lo, hi],
                         "expert_dev": float(d[np.arange(len(d)), r].mean() / scale),
                         "expert_first": float((d.argmax(axis=1) == r).mean()),
                         "corr_neg_ce": float(np.corrcoef(d.ravel(), -_within(teacher_ce[keep]).ravel())[0, 1])})
        out["targets"][target] = rows
    return out


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.credit_signal",
                            description="how well each per-sample credit points at a sample's right teacher")
    parser.add_argument("--scenario", default="specialists", help="a classification scenario of the suite")
    parser.add_argument("--seed", type=int, default=8, help="the AVER episode's seed")
    parser.add_argument("--every", type=int, default=3, help="measure every N steps")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--agent", nargs="+", metavar="RUN_DIR",
                        help="episodes weighted by these trained agents (run directories or model files) instead of AVER")
    args = parser.parse_args(argv)
    if args.scenario not in SCENARIOS:
        raise unknown_name("scenario", args.scenario, SCENARIOS)
    if args.every < 1:
        raise ConfigError(f"--every: expected an integer >= 1, got {args.every}")
    config = EnvConfig(scenario=args.scenario, show_progress=False)
    if config.task != "classification":
        raise ConfigError(f"--scenario: the credits are for classification, {args.scenario!r} is {config.task}")
    runs = [credit_signal(config, args.seed, args.every, agent) for agent in (args.agent or [None])]
    for figures in runs:
        who = "AVER" if figures["agent"] is None else f"agent {figures['agent']}"
        print(f"{figures['scenario']}, {who}, episode seed {figures['seed']}, {figures['teachers']} teachers "
              f"(chance of ranking the right teacher first: {1 / figures['teachers']:.2f})")
        print("weight on the right teacher per third: " + " / ".join(f"{w:.2f}" for w in figures["right_weight"]))
        print("| credit | steps | right teacher's deviation (sd) | right teacher first | corr with −teacher CE |")
        print("|---|---|---:|---:|---:|")
        for target, rows in figures["targets"].items():
            for row in rows:
                print(f"| {target} | {row['steps'][0]}–{row['steps'][1]} | {row['expert_dev']:+.3f} | "
                      f"{row['expert_first']:.2f} | {row['corr_neg_ce']:+.3f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(runs if args.agent else runs[0], indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
