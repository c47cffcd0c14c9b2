"""`python -m baselines.diagnose`: can a reward tell a better weighting from a worse one, and when?

Forks an episode at evenly spaced points and continues from each fork under two weightings, A
(default `aver`) and B (default `drop-worst`), on identical batches (`env.state_dict()` /
`load_state_dict()`: same student, optimiser, data position). For each reward in the registry it
sums the reward over a horizon of H steps after the fork under both arms and reports, over all
(seed, fork) pairs:

- mean and sd of the difference d = R_B(H) - R_A(H), and SNR = mean / sd (paired);
- `snr_unpaired` = mean(d) / the pooled sd of R_A(H) and R_B(H) over pairs: the separation a
  learner sees when it compares single episodes, not paired forks;
- how often sign(d) agrees with the sign of the final validation / test accuracy difference
  B - A of the same fork (pairs whose final difference is 0 are left out; d = 0 counts 1/2).

Horizons: 1 step, 1 epoch, several epochs and the rest of the episode. A reward whose SNR or sign
agreement flips between short horizons and the rest of the episode has short-horizon bias: an
agent that maximises it with a short effective horizon (γ < 1) learns the wrong thing. Outputs: a
table on stdout, `diagnose.json` and `snr.png` (SNR vs horizon per reward) in `--out`.

The A arm runs each seed's episode once, uninterrupted (its forks are that run's own states); B
runs from every fork to the end: about 1 + F/2 episodes per seed for F forks (x ~1.6 when twin
rewards are among those measured, which add a lockstep twin student).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Dict, List, Optional, Sequence, Tuple

from pydantic import Field

import numpy as np

from mtkd_env.config import ConfigError, EnvConfig, add_env_flags, env_config_from
from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import did_you_mean
from mtkd_env.runtime.options import Cli, add_options, options_from, settings

__all__ = ["DiagnoseOptions", "ForkRecord", "run_diagnosis", "summarize", "parse_horizon", "main"]

Arm = Callable[[], Tuple[np.ndarray, Optional[np.ndarray]]]


@settings(label="flag")
class DiagnoseOptions:
    """Every knob of a diagnosis; CLI flags map 1:1 onto these fields (`--env-config`/`--env` give
    `env_config`)."""

    a: str = "aver"
    """Reference arm (its run is the forked trajectory): a formula policy name or a weight vector "w1,w2,..."."""
    b: str = "drop-worst"
    """Compared arm, run from every fork: a policy name or a weight vector."""
    seeds: Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1), Cli(item='seed')] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    """Episode seeds (`env.reset(seed=s)`: student initialisation and data order)."""
    forks: Annotated[int, Field(ge=1)] = 6
    """Fork points per episode, at steps k * T / forks for k = 0 .. forks - 1."""
    horizons: Annotated[List[str], Field(min_length=1), Cli(item='horizon')] = field(default_factory=lambda: ['1', 'epoch', '3epochs', 'rest'])
    """Horizons: a number of steps, "epoch", "<n>epochs" or "rest" (to the episode's end)."""
    rewards: Annotated[List[str], Cli(split=True)] = field(default_factory=list)
    """Reward names to measure (default: every registered reward)."""
    imports: Annotated[List[str], Cli(flag='--import', metavar='MODULE')] = field(default_factory=list)
    """Modules to import first (to register your own rewards with `mtkd_env.mdp.register_reward`)."""
    out: str = "diagnose_out"
    """Output folder for diagnose.json and snr.png."""
    progress: bool = True
    """Report each fork on stderr."""
    env_config: Annotated[EnvConfig, Cli(hidden=True)] = field(default_factory=EnvConfig)
    """The env (its `reward` and `log_rewards` are replaced by the measured rewards)."""


@dataclass
class ForkRecord:
    """One fork: cumulative reward sums of both arms per reward, and the final outcome."""

    seed: int
    fork: int                              # env step at which the arms split
    sums_a: Dict[str, List[float]]         # reward -> cumulative sums over steps fork+1 .. T
    sums_b: Dict[str, List[float]]
    final_val_a: float
    final_val_b: float
    final_test_a: float
    final_test_b: float


def parse_horizon(spec: str, steps_per_epoch: int) -> Optional[int]:
    """Steps of a horizon spec; None = the rest of the episode."""
    text = str(spec).strip().lower()
    if text == "rest":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text in ("epoch", "1epoch"):
        return steps_per_epoch
    if text.endswith("epochs") and text[:-6].isdigit() and int(text[:-6]) >= 1:
        return int(text[:-6]) * steps_per_epoch
    raise ConfigError(f"horizon {spec!r}: expected a number of steps, 'epoch', '<n>epochs' or 'rest'")


def _weights_arm(spec: str, num_teachers: int) -> Optional[np.ndarray]:
    parts = spec.split(",")
    try:
        w = np.array([float(p) for p in parts], dtype=np.float32)
    except ValueError:
        return None
    if w.shape != (num_teachers,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"weight vector {spec!r}: expected {num_teachers} finite non-negative numbers "
                          f"(one per teacher)")
    return w


def _arm_needs_sample(spec: str) -> bool:
    from .policies import POLICIES

    return spec in POLICIES and POLICIES[spec].per_sample


def make_arm(spec: str, env) -> Arm:
    """A zero-argument function giving (w_logit, w_feat) for the env's prepared batch."""
    from .policies import POLICIES, make_policy

    w = _weights_arm(spec, env.num_teachers)
    if w is not None:
        return lambda: (w, None)
    if spec not in POLICIES:
        raise ConfigError(f"arm {spec!r}: not a formula policy{did_you_mean([spec], POLICIES)} nor a weight "
                          f"vector; known policies: {sorted(POLICIES)}")
    policy = make_policy(spec, env)
    return policy.act


def _run_to_end(env, arm: Arm, names: Sequence[str], fork_steps=(), states=None):
    """Step `arm` until the episode ends; returns per-step rewards {name: [..]} and final accs.
    Saves `env.state_dict()` before each step listed in `fork_steps` into `states`."""
    rewards = {n: [] for n in names}
    t = env._t
    while True:
        if t in fork_steps:
            states[t] = env.state_dict()
        _, _, terminated, truncated, info = env.step_weights(*arm())
        for n in names:
            rewards[n].append(info["rewards"][n])
        t += 1
        if terminated or truncated:
            return rewards, float(info["final_val_acc"]), float(info["final_test_acc"])


def run_diagnosis(options: DiagnoseOptions, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the fork study; returns the JSON-ready result (options, records, summary rows)."""
    from mtkd_env.env import MultiTeacherKDEnv
    from mtkd_env.mdp.rewards import REWARDS

    # by default every reward that applies (the credit rewards are for classification)
    names = list(options.rewards) or [n for n in sorted(REWARDS)
                                      if options.env_config.task == "classification" or not REWARDS[n].needs_credit]
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ConfigError(f"--rewards: unknown reward(s) {unknown}{did_you_mean(unknown, REWARDS)}; known "
                          f"rewards: {sorted(REWARDS)}")
    overrides = {"reward": "neg_loss", "log_rewards": names, "show_progress": False}
    if _arm_needs_sample(options.a) or _arm_needs_sample(options.b):
        overrides["granularity"] = "sample"
    env = MultiTeacherKDEnv(options.env_config.replace(**overrides))
    total = env.total_steps
    per_epoch = max(1, math.ceil(env.engine.loader.batches_per_epoch / env.config.steps_per_action))
    horizons = {h: parse_horizon(h, per_epoch) for h in options.horizons}
    fork_steps = sorted({int(k * total / options.forks) for k in range(options.forks)})
    arm_a, arm_b = make_arm(options.a, env), make_arm(options.b, env)
    records: List[ForkRecord] = []
    for seed in options.seeds:
        env.reset(seed=seed)
        states: dict = {}
        rewards_a, val_a, test_a = _run_to_end(env, arm_a, names, fork_steps, states)
        for fork in fork_steps:
            progress(f"seed {seed}: fork at step {fork}/{total}")
            env.load_state_dict(states[fork])
            rewards_b, val_b, test_b = _run_to_end(env, arm_b, names)
            records.append(ForkRecord(
                seed, fork, {n: np.cumsum(rewards_a[n][fork:]).tolist() for n in names},
                {n: np.cumsum(rewards_b[n]).tolist() for n in names}, val_a, val_b, test_a, test_b))
    return {"options": {**{k: v for k, v in asdict(options).items() if k != "env_config"},
                        "env_config": options.env_config.to_dict()},
            "teachers": list(env.teacher_names), "teacher_val_acc": env.teacher_val_acc.tolist(),
            "total_steps": total, "steps_per_epoch": per_epoch, "fork_steps": fork_steps,
            "horizon_steps": {h: (total if v is None else v) for h, v in horizons.items()},
            "records": [asdict(r) for r in records],
            "summary": summarize(records, horizons, names, total)}


def _agreement(d: np.ndarray, outcome: np.ndarray) -> Optional[float]:
    keep = outcome != 0
    if not keep.any():
        return None
    score = np.where(d[keep] == 0, 0.5, (np.sign(d[keep]) == np.sign(outcome[keep])).astype(float))
    return float(score.mean())


def summarize(records: Sequence[ForkRecord], horizons: Dict[str, Optional[int]], names: Sequence[str],
              total: int) -> List[dict]:
    """One row per (reward, horizon): n, mean/sd of d, SNRs and sign agreement (see module doc)."""
    rows = []
    for name in names:
        for label, steps in horizons.items():
            ra, rb, dv, dt = [], [], [], []
            for r in records:
                h = total - r.fork if steps is None else steps
                if r.fork + h > total or h > len(r.sums_a[name]) or h > len(r.sums_b[name]):
                    continue
                ra.append(r.sums_a[name][h - 1])
                rb.append(r.sums_b[name][h - 1])
                dv.append(r.final_val_b - r.final_val_a)
                dt.append(r.final_test_b - r.final_test_a)
            row = {"reward": name, "horizon": label, "n": len(ra)}
            if ra:
                ra_, rb_ = np.asarray(ra), np.asarray(rb)
                d = rb_ - ra_
                sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
                pooled = math.sqrt((ra_.var(ddof=1) + rb_.var(ddof=1)) / 2) if len(d) > 1 else float("nan")
                row.update(mean=float(d.mean()), sd=sd, snr=_ratio(d.mean(), sd), snr_unpaired=_ratio(d.mean(), pooled),
                           agree_val=_agreement(d, np.asarray(dv)), agree_test=_agreement(d, np.asarray(dt)),
                           final_val_diff=float(np.mean(dv)), final_test_diff=float(np.mean(dt)))
            rows.append(row)
    return rows


def _ratio(num: float, den: float) -> Optional[float]:
    if not np.isfinite(den) or den == 0:
        return None
    return float(num / den)


def format_table(result: dict) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    o = result["options"]
    lines = [f"B = {o['b']} vs A = {o['a']}, {len(o['seeds'])} seed(s) x {len(result['fork_steps'])} fork(s) "
             f"at steps {result['fork_steps']} of {result['total_steps']} (1 epoch = {result['steps_per_epoch']} steps)",
             f"{'reward':<20} {'horizon':>8} {'n':>4} {'mean d':>10} {'sd d':>9} {'SNR':>7} {'SNR unp.':>8} "
             f"{'agree val':>9} {'agree test':>10}"]
    for r in result["summary"]:
        if not r["n"]:
            continue
        lines.append(f"{r['reward']:<20} {r['horizon']:>8} {r['n']:>4} {f(r['mean'], '+.4f'):>10} {f(r['sd'], '.4f'):>9} "
                     f"{f(r['snr'], '+.2f'):>7} {f(r['snr_unpaired'], '+.2f'):>8} {f(r['agree_val'], '.2f'):>9} "
                     f"{f(r['agree_test'], '.2f'):>10}")
    rest = [r for r in result["summary"] if r["horizon"] == "rest" and r["n"]]
    if rest:
        r = rest[0]
        lines.append(f"final accuracy B - A over the same forks: val {100 * r['final_val_diff']:+.2f} pp, "
                     f"test {100 * r['final_test_diff']:+.2f} pp")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["horizon_steps"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in dict.fromkeys(r["reward"] for r in result["summary"]):
        rows = [r for r in result["summary"] if r["reward"] == name and r["n"] and r["snr"] is not None]
        if rows:
            ax.plot([steps[r["horizon"]] for r in rows], [r["snr"] for r in rows], marker="o", label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("horizon after the fork (env steps, log scale)")
    ax.set_ylabel("SNR of the reward difference B − A")
    o = result["options"]
    ax.set_title(f"{o['b']} vs {o['a']}: reward signal vs horizon")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m baselines.diagnose", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DiagnoseOptions)
    add_env_flags(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[List[str]]) -> int:
    from mtkd_env.runtime.files import atomic_write_text, check_output_dir

    args = vars(_parser().parse_args(argv))
    options = options_from(DiagnoseOptions, args, env_config=env_config_from(args))
    for module in options.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--import {module}: {exc}") from None
    out = Path(options.out)
    check_output_dir(out, "--out")
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if options.progress else (lambda s: None)
    result = run_diagnosis(options, say)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "diagnose.json", json.dumps(result, indent=1))
    plot(result, out / "snr.png")
    print(format_table(result))
    print(f"wrote {out / 'diagnose.json'} and {out / 'snr.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
