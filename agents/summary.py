"""The end-of-run summary of a training run: the final evaluation and its printed form."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mtkd_env import ENV_ID
from mtkd_env.runtime import collective
from mtkd_env.stats import paired_stats

from .algos import load_policy
from .evaluation import eval_seeds, evaluate_equal, evaluate_policy, mean_std
from .modelfile import MODEL_NAME
from .policy import Policy

__all__ = ["summarize", "final_policy", "flatten", "format_summary"]


def final_policy(run: Any) -> Policy:
    """The saved policy; other ranks get rank 0's model file (their run directory may not
    exist), so every rank evaluates the same policy."""
    path = run.run_dir / MODEL_NAME
    if not run.dist.enabled:
        return load_policy(path)
    blob = collective.broadcast_object(run.dist, path.read_bytes() if run.dist.is_main else None)
    with tempfile.TemporaryDirectory(prefix="mtkd_policy_") as tmp:
        local = Path(tmp) / MODEL_NAME
        local.write_bytes(blob)
        return load_policy(local)


def summarize(run: Any) -> dict:
    """The end-of-run summary: training counters and, with `eval_episodes`, the final evaluation
    (trained policy vs equal weights on the same fresh students)."""
    s = run.settings
    names = list(run.agent.env.teacher_names)
    summary = {"run_dir": str(run.run_dir), "algo": s.algo, "env_id": ENV_ID, "seed": s.seed,
               "num_timesteps": run.agent.num_timesteps, "episodes": run.callback.episodes,
               "wall_time_s": round(run.wall_time, 1), "teacher_names": names,
               "last_train_episode_test_acc": run.callback.last_test_acc, "eval": None}
    if s.eval_episodes > 0:
        policy = final_policy(run)
        seeds = eval_seeds(s.seed, s.eval_episodes)
        user_config = run.env_config.replace(show_progress=False)
        trained = evaluate_policy(policy, user_config, seeds)
        # Equal weights through `step_weights` train the student identically in either granularity.
        equal = evaluate_equal(user_config, seeds)
        diff = [a.test_acc - b.test_acc for a, b in zip(trained, equal)]
        summary["eval"] = {
            "seeds": seeds,
            "policy_test_acc": [r.test_acc for r in trained],
            "equal_test_acc": [r.test_acc for r in equal],
            "policy_val_acc": [r.val_acc for r in trained],
            "equal_val_acc": [r.val_acc for r in equal],
            "policy_test_acc_mean_std": mean_std([r.test_acc for r in trained]),
            "equal_test_acc_mean_std": mean_std([r.test_acc for r in equal]),
            "test_acc_diff_mean_std": mean_std(diff),
            "test_acc_paired": asdict(paired_stats([r.test_acc for r in equal], [r.test_acc for r in trained])),
            "mean_weight_logit": dict(zip(names, np.mean([r.mean_w_logit for r in trained], 0).tolist())),
            "mean_weight_feat": dict(zip(names, np.mean([r.mean_w_feat for r in trained], 0).tolist())),
        }
    return summary


def flatten(d: dict, prefix: str = "summary/") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
            out[f"{prefix}{key}"] = value
    return out


def _test_note(paired: Optional[dict]) -> str:
    if not paired or paired.get("p_ttest") is None:
        return ""
    mde = paired.get("mde")
    return (f"   (paired t-test p = {paired['p_ttest']:.3g}"
            + (f"; minimum detectable effect {mde:.4f} at α 0.05, power 0.8)" if mde is not None else ")"))


def format_summary(summary: dict) -> str:
    """The human-readable end-of-run summary printed by `python -m agents.train`."""
    minutes, seconds = divmod(int(round(summary["wall_time_s"])), 60)
    lines = [f"== {summary['algo']} on {summary['env_id']}: seed {summary['seed']}, {summary['num_timesteps']} steps "
             f"({summary['episodes']} episodes), training wall time {minutes}m{seconds:02d}s =="]
    ev = summary.get("eval")
    if ev is None:
        lines.append(f"last training episode: final test acc {summary['last_train_episode_test_acc']:.4f} "
                     "(no evaluation episodes requested)")
    else:
        n = len(ev["seeds"])
        pm, ps = ev["policy_test_acc_mean_std"]
        em, es = ev["equal_test_acc_mean_std"]
        dm, ds = ev["test_acc_diff_mean_std"]
        lines += [f"final student test accuracy, {n} fresh student(s), seeds {ev['seeds'][0]}..{ev['seeds'][-1]}:",
                  f"  trained policy        {pm:.4f} ± {ps:.4f}",
                  f"  equal weights (AVER)  {em:.4f} ± {es:.4f}",
                  f"  difference (paired)   {dm:+.4f} ± {ds:.4f}{_test_note(ev.get('test_acc_paired'))}",
                  "mean weight per teacher under the trained policy (logit KD / feature KD):"]
        width = max(len(n) for n in ev["mean_weight_logit"])
        for name in ev["mean_weight_logit"]:
            lines.append(f"  {name:<{width}}  {ev['mean_weight_logit'][name]:.3f} / {ev['mean_weight_feat'][name]:.3f}")
    lines.append(f"run directory: {summary['run_dir']}")
    return "\n".join(lines)
