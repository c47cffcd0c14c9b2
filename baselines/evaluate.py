"""One evaluation episode of a weighting policy, with its validation curve and weight trace.

`run_episode` drives the env only through its public step API (formula policies through
`env.step_weights`, agents through `env.step(policy.predict(obs)[0])`), so the distillation step is
the engine's. Under torch.distributed a formula policy weighs the global batch (`formula_weights`),
so a W-rank run applies the weights of a 1-process run. `run_task` is the process-pool entry point
of `baselines.compare`: it builds (and caches per process) the env and the policy of one (policy,
seed) run and logs it to W&B.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .policies import FormulaPolicy, make_policy

__all__ = ["EpisodeResult", "run_episode", "formula_weights", "EvalTask", "run_task", "init_worker", "env_for"]

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
    functions read, and the policy's `feature_logits` (M, B, C) when it has separate feature
    weights. Returns (w_logit, w_feat): (B, M) for per-sample policies, else (M,); w_feat None
    means the logit weights.
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
    feature = policy.feature_logits(batch)
    w_feat = None
    if feature is not None:
        w_feat = policy.feature_weights(ctx.gather_rows(feature.transpose(0, 1)).transpose(0, 1), whole.y)
        w_feat = w_feat.cpu().numpy()
    return (w if policy.per_sample else w[0]).cpu().numpy(), w_feat


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


# --- process-pool entry point ----------------------------------------------------------------
@dataclass
class EvalTask:
    """Everything a worker needs for one (policy, seed) run; picklable."""

    policy: str
    seed: int
    env_config: Any                       # mtkd_env.EnvConfig (user config, before overrides)
    eval_every: int = 10
    policy_options: Dict[str, Any] = field(default_factory=dict)
    agent_path: Optional[str] = None      # RL policies: a run directory or model file
    agent_seed: Optional[int] = None
    wandb_mode: str = "disabled"
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    wandb_dir: Optional[str] = None


_ENVS: Dict[str, Any] = {}
_AGENTS: Dict[str, Any] = {}


def init_worker(threads: int) -> None:
    """Pool initialiser: each worker uses `threads` intra-op threads (no oversubscription)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def env_for(config) -> Any:
    """An env for `config`, reused across runs of this process (reset(seed) re-creates the student,
    optimiser and data order, so reuse cannot leak state between runs)."""
    import json

    from mtkd_env.env import MultiTeacherKDEnv

    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key not in _ENVS:
        _ENVS[key] = MultiTeacherKDEnv(config)
    return _ENVS[key]


def _load_agent(path: str):
    if path not in _AGENTS:
        import importlib

        _AGENTS[path] = importlib.import_module("agents.api").load_policy(path)
    return _AGENTS[path]


def run_task(task: EvalTask) -> Dict[str, Any]:
    """Run one task; returns its policy, seed, agent_seed, teacher_names and result (as a dict)."""
    if task.agent_path is not None:
        policy = _load_agent(task.agent_path)
    else:
        policy = make_policy(task.policy, seed=task.seed, **task.policy_options)
    config = task.env_config.replace(**policy.env_overrides) if policy.env_overrides else task.env_config
    env = env_for(config)
    with WandbRun(task, config, env) as run:
        result = run_episode(env, policy, task.seed, eval_every=task.eval_every, log=run.log)
        run.finish(result)
    return {"policy": task.policy, "seed": task.seed, "agent_seed": task.agent_seed,
            "result": asdict(result), "teacher_names": list(env.teacher_names)}


class WandbRun:
    """One W&B run per (policy, seed), grouped so the UI compares policies; a no-op (wandb is not
    even imported) when the mode is "disabled"."""

    def __init__(self, task: EvalTask, config, env) -> None:
        self.run = None
        if task.wandb_mode == "disabled":
            return
        import wandb

        if task.wandb_dir:
            os.makedirs(task.wandb_dir, exist_ok=True)
        self.run = wandb.init(
            project=task.wandb_project, group=task.wandb_group, job_type="eval", mode=task.wandb_mode,
            name=f"{task.policy}__seed{task.seed}", tags=[task.policy], dir=task.wandb_dir, reinit="create_new",
            config={"policy": task.policy, "seed": task.seed, "agent_seed": task.agent_seed,
                    "agent_path": task.agent_path, "policy_options": task.policy_options,
                    "eval_every": task.eval_every, "teacher_names": list(env.teacher_names),
                    "teacher_val_acc": [float(a) for a in env.teacher_val_acc], "env": config.to_dict()})
        self.run.define_metric("env_step")
        self.run.define_metric("*", step_metric="env_step")

    def log(self, metrics: Dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "env_step": step})

    def finish(self, result: EpisodeResult) -> None:
        if self.run is not None:
            self.run.summary.update({"final_test_acc": result.test_acc, "final_val_acc": result.val_acc,
                                     "steps": result.steps, "diverged": result.diverged,
                                     "steps_per_s": result.steps_per_s})

    def __enter__(self) -> "WandbRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if exc_type else 0)
