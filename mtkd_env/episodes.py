"""The one episode runner and its result type, used by `agents` (final evaluation, `agents.evaluate`),
`baselines.compare` and `python -m mtkd_env`.

`run_episode` drives the env only through its public step API: a `WeightPolicy` (formula
baselines, `EqualWeights`) through `env.step_weights(*policy.weights(env))`, an `ActionPolicy`
(agents) through `env.step(policy.predict(obs)[0])`, so the distillation step is the engine's.
Episodes with the same seed start from the same student, data order and augmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .protocols import ActionPolicy, WeightPolicy
from .runtime.errors import ConfigError

__all__ = ["EpisodeResult", "EqualWeights", "run_episode", "run_episodes", "LogFn"]

LogFn = Callable[[Dict[str, float], int], None]
"""`log(metrics, env_step)`, called at every validation point of an episode."""


@dataclass
class EpisodeResult:
    """The outcome of one episode. Weights are batch means per teacher: `mean_w_*` (M,) over the
    episode, `window_w_*` (K, M) over the windows that end at `weight_steps`."""

    seed: int
    test_acc: float                   # the student's final test accuracy (info["final_test_acc"])
    val_acc: float                    # ... and validation accuracy (info["final_val_acc"])
    steps: int
    episode_return: float = 0.0
    diverged: bool = False
    policy_s: float = 0.0             # wall time inside policy + env.step (validation excluded)
    mean_w_logit: List[float] = field(default_factory=list)
    mean_w_feat: List[float] = field(default_factory=list)
    curve_steps: List[int] = field(default_factory=list)     # validation points (step 0 = init)
    curve_val_acc: List[float] = field(default_factory=list)
    weight_steps: List[int] = field(default_factory=list)    # end step of each window
    window_w_logit: List[List[float]] = field(default_factory=list)
    window_w_feat: List[List[float]] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.policy_s if self.policy_s > 0 else float("nan")


class EqualWeights:
    """AVER: every teacher weighted 1/M for logits and features (through `env.step_weights`, which
    trains the student identically in either granularity)."""

    algo = "aver"
    env_overrides: Dict[str, Any] = {}

    def start_episode(self, env: Any, seed: int) -> None:
        self._w = np.full(env.num_teachers, 1.0 / env.num_teachers, dtype=np.float32)

    def weights(self, env: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self._w, None


def _batch_mean(w: np.ndarray, m: int) -> np.ndarray:
    return np.asarray(w, dtype=np.float64).reshape(-1, m).mean(0)


def run_episode(env: Any, policy: Union[ActionPolicy, WeightPolicy], seed: int, *, eval_every: Optional[int] = None,
                log: Optional[LogFn] = None, on_step: Optional[Callable[[dict], None]] = None) -> EpisodeResult:
    """Train one student with `policy` from `env.reset(seed=seed)` to the episode's end.

    With `eval_every`, validation accuracy is measured at step 0 and every `eval_every` steps (eval
    mode, no grad: the trajectory does not change) and weights are averaged over the same windows;
    `log(metrics, step)` receives both at each validation point. `on_step(info)` sees every step.
    """
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ConfigError(f"eval_every: expected an integer >= 1, got {eval_every!r}")
    obs, _ = env.reset(seed=seed)
    direct = isinstance(policy, WeightPolicy)
    if direct:
        policy.start_episode(env, seed)
    names, m = list(env.teacher_names), env.num_teachers
    res = EpisodeResult(seed=int(seed), test_acc=float("nan"), val_acc=float("nan"), steps=0)
    if eval_every is not None:
        res.curve_steps.append(0)
        res.curve_val_acc.append(float(env.engine.val_accuracy()))
        if log is not None:
            log({"val_acc": res.curve_val_acc[0]}, 0)
    total_l, total_f = np.zeros(m), np.zeros(m)
    win_l, win_f, win_n, win_loss = np.zeros(m), np.zeros(m), 0, 0.0
    state, start = None, True
    while True:
        t0 = time.perf_counter()
        if direct:
            obs, reward, terminated, truncated, info = env.step_weights(*policy.weights(env))
        else:
            action, state = policy.predict(obs, state=state, episode_start=np.array([start]), deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
        res.policy_s += time.perf_counter() - t0
        start = False
        res.episode_return += reward
        wl, wf = _batch_mean(info["weights_logit"], m), _batch_mean(info["weights_feat"], m)
        total_l += wl
        total_f += wf
        win_l += wl
        win_f += wf
        win_n += 1
        win_loss += info["loss"]
        step = int(info["step"])
        done = terminated or truncated
        if on_step is not None:
            on_step(info)
        if eval_every is not None and (done or step % eval_every == 0):
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
    res.val_acc = float(info["final_val_acc"]) if "final_val_acc" in info else float(env.engine.val_accuracy())
    res.test_acc = float(info["final_test_acc"]) if "final_test_acc" in info else float(env.engine.test_accuracy())
    res.mean_w_logit = (total_l / step).tolist()
    res.mean_w_feat = (total_f / step).tolist()
    return res


def run_episodes(policy: Union[ActionPolicy, WeightPolicy], env_config: Any, seeds: Sequence[int],
                 env: Any = None, **episode_options: Any) -> List[EpisodeResult]:
    """Episodes of `policy` on `MultiTeacherKDEnv(env_config.replace(**policy.env_overrides))` (or
    `env`), one per seed, with `run_episode`'s `episode_options`. A policy with `check_env(env)` is
    checked first (an agent evaluated on an env whose observation it was not trained on is a one-line
    `ConfigError`, not a shape error inside its network)."""
    if env is None:
        from mtkd_env.env import MultiTeacherKDEnv

        overrides = dict(policy.env_overrides)
        env = MultiTeacherKDEnv(env_config.replace(**overrides) if overrides else env_config)
    check = getattr(policy, "check_env", None)
    if check is not None:
        check(env)
    return [run_episode(env, policy, s, **episode_options) for s in seeds]
