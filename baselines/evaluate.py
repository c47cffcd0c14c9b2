"""One evaluation episode of a weighting policy, with its validation curve and weight trace.

`run_episode` drives the env only through its public step API (formula policies through
`env.step_weights`, agents through `env.step(policy.predict(obs)[0])`), so the distillation step is
the engine's. Under torch.distributed a formula policy weighs the global batch (`formula_weights`),
so a W-rank run applies the weights of a 1-process run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .policies import FormulaPolicy

__all__ = ["EpisodeResult", "run_episode", "formula_weights"]

LogFn = Callable[[Dict[str, float], int], None]


@dataclass
class EpisodeResult:
    """Outcome of one episode. Weight arrays are batch means per teacher, (M,) or (K, M)."""

    test_acc: float
    val_acc: float
    steps: int
    diverged: bool
    policy_s: float                   # wall time inside policy + env.step (validation excluded)
    mean_w_logit: List[float]
    mean_w_feat: List[float]
    curve_steps: List[int] = field(default_factory=list)     # validation points (step 0 = init)
    curve_val_acc: List[float] = field(default_factory=list)
    weight_steps: List[int] = field(default_factory=list)    # end step of each window
    window_w_logit: List[List[float]] = field(default_factory=list)  # (K, M) window means
    window_w_feat: List[List[float]] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.policy_s if self.policy_s > 0 else float("nan")


def _batch_mean(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return w.mean(0) if w.ndim == 2 else w


def formula_weights(policy: FormulaPolicy, env) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """`policy.act()`, on the global batch when the env is distributed.

    Under torch.distributed each rank holds b = B / W rows of the batch. Per-sample formulas (EBKD,
    CA-MKD) must return all B rows (`env.step_weights` applies rank 0's array on every rank and each
    rank takes its own rows) and batch-level ones (AEKD) average over the whole batch, so the
    formula reads the rows of every rank, gathered in rank order: exactly the 1-process batch.
    Gathered: teacher logits (M, B, C), labels (B,) and student logits (B, C), what the weight
    functions read. Returns (w_logit, None): (B, M) for per-sample policies, else (M,).
    """
    ctx = env.dist
    if not ctx.enabled:
        return policy.act()
    if policy.env is not env:
        raise RuntimeError(f"policy {policy.algo!r} is not bound to this env; call bind(env) first")
    batch = env.engine.batch
    whole = SimpleNamespace(
        teacher_logits=ctx.gather_rows(batch.teacher_logits.transpose(0, 1)).transpose(0, 1),
        y=ctx.gather_rows(batch.y), student_logits=ctx.gather_rows(batch.student_logits.detach()))
    w = policy.batch_weights(whole)
    return (w if policy.per_sample else w[0]).cpu().numpy(), None


def run_episode(env, policy, seed: int, *, eval_every: int = 10, log: Optional[LogFn] = None) -> EpisodeResult:
    """Train one student with `policy`'s weights from `env.reset(seed=seed)` to the episode's end.

    Validation accuracy is measured at step 0 and every `eval_every` steps (eval mode, no grad: it
    does not change the trajectory); weights are averaged over the same windows. `log(metrics,
    step)` receives both at each validation point.
    """
    if eval_every < 1:
        raise ValueError(f"eval_every: expected an integer >= 1, got {eval_every!r}")
    obs, _ = env.reset(seed=seed)
    formula = isinstance(policy, FormulaPolicy)
    if formula:
        policy.bind(env)
        policy.reset(seed)
    names = list(env.teacher_names)
    m = env.num_teachers
    res = EpisodeResult(0.0, 0.0, 0, False, 0.0, [], [])
    res.curve_steps.append(0)
    res.curve_val_acc.append(float(env.engine.val_accuracy()))
    if log is not None:
        log({"val_acc": res.curve_val_acc[0]}, 0)
    total_l, total_f = np.zeros(m), np.zeros(m)
    win_l, win_f, win_n, win_loss = np.zeros(m), np.zeros(m), 0, 0.0
    state, start = None, True
    while True:
        t0 = time.perf_counter()
        if formula:
            obs, _, terminated, truncated, info = env.step_weights(*formula_weights(policy, env))
        else:
            action, state = policy.predict(obs, state=state, episode_start=np.array([start]), deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
        res.policy_s += time.perf_counter() - t0
        start = False
        wl, wf = _batch_mean(info["weights_logit"]), _batch_mean(info["weights_feat"])
        total_l += wl
        total_f += wf
        win_l += wl
        win_f += wf
        win_n += 1
        win_loss += info["loss"]
        step = int(info["step"])
        done = terminated or truncated
        if done or step % eval_every == 0:
            val = info["final_val_acc"] if "final_val_acc" in info else float(env.engine.val_accuracy())
            res.curve_steps.append(step)
            res.curve_val_acc.append(float(val))
            res.weight_steps.append(step)
            res.window_w_logit.append((win_l / win_n).tolist())
            res.window_w_feat.append((win_f / win_n).tolist())
            if log is not None:
                metrics = {"val_acc": float(val), "train_loss": win_loss / win_n, "lr": info["lr"]}
                metrics.update({f"w_logit/{n}": float(v) for n, v in zip(names, win_l / win_n)})
                metrics.update({f"w_feat/{n}": float(v) for n, v in zip(names, win_f / win_n)})
                log(metrics, step)
            win_l, win_f, win_n, win_loss = np.zeros(m), np.zeros(m), 0, 0.0
        if done:
            break
    res.steps = step
    res.diverged = bool(info.get("diverged", False))
    res.val_acc = float(res.curve_val_acc[-1])
    res.test_acc = float(info["final_test_acc"]) if "final_test_acc" in info else float(env.engine.test_accuracy())
    res.mean_w_logit = (total_l / step).tolist()
    res.mean_w_feat = (total_f / step).tolist()
    return res
