"""Rewards by name. Each maps a `StepResult` (host values of one env step) to a Python float."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .runtime.errors import ConfigError, did_you_mean

__all__ = ["StepResult", "Reward", "REWARDS", "register_reward", "make_reward", "paper_reward_vector"]


@dataclass
class StepResult:
    """What one env step measured, already on the host."""

    step: int
    loss: float                                  # mean total loss over the step's iterations
    per_sample_loss: np.ndarray                  # (B,) total loss of the last iteration, pre-update
    student_ce: float
    student_acc: float
    probe_loss_before: Optional[float] = None    # student CE on the probe batch before the update
    probe_loss_after: Optional[float] = None     # ... and after it
    val_acc: Optional[float] = None              # set on validation steps
    prev_val_acc: Optional[float] = None         # the previous validation accuracy


class Reward:
    """Base class: subclasses say which measurements they need and compute a float."""

    needs_probe: bool = False
    needs_val: bool = False

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        raise NotImplementedError


REWARDS: Dict[str, type] = {}


def register_reward(name: str) -> Callable:
    def deco(cls: type) -> type:
        REWARDS[name] = cls
        return cls

    return deco


def paper_reward_vector(per_sample_loss: np.ndarray) -> np.ndarray:
    """MTKD-RL's per-sample reward: clamp(zscore_B(-loss_i), 0, 1); zeros when B = 1 or std = 0."""
    r = -np.asarray(per_sample_loss, dtype=np.float64)
    if r.size < 2:
        return np.zeros_like(r)
    std = r.std(ddof=1)  # torch's Tensor.std default, as the official code
    if not np.isfinite(std) or std == 0:
        return np.zeros_like(r)
    return np.clip((r - r.mean()) / std, 0.0, 1.0)


@register_reward("paper")
class PaperReward(Reward):
    """Official code: negative per-sample pre-update loss, batch z-scored, clamped to [0, 1].
    Scalar = mean; the vector is `info["reward_vector"]`."""

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        vec = paper_reward_vector(result.per_sample_loss)
        return float(vec.mean()), {"reward_vector": vec.astype(np.float32)}


@register_reward("probe_loss_drop")
class ProbeLossDrop(Reward):
    """Decrease of the student's CE on a fixed held-out probe batch since the previous step's
    measurement (each taken right after the update; an episode's rewards sum to the total drop)."""

    needs_probe = True

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return float(result.probe_loss_before - result.probe_loss_after), {}


@register_reward("neg_loss")
class NegLoss(Reward):
    """Negative mean training loss of the step (pre-update, the weighted KD objective)."""

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return float(-result.loss), {}


@register_reward("val_acc_delta")
class ValAccDelta(Reward):
    """Change of validation accuracy since the last evaluation, every `reward_interval` steps
    (and at the episode's end); 0 on other steps."""

    needs_val = True

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        if result.val_acc is None:
            return 0.0, {}
        return float(result.val_acc - result.prev_val_acc), {}


class CallableReward(Reward):
    """Wraps a user function `f(StepResult) -> float` (it receives probe values too)."""

    needs_probe = True

    def __init__(self, fn: Callable[[StepResult], float]) -> None:
        self.fn = fn

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return float(self.fn(result)), {}


def make_reward(spec, granularity: str) -> Reward:
    if spec is None:
        spec = "paper" if granularity == "sample" else "probe_loss_drop"
    if callable(spec):
        return CallableReward(spec)
    if spec not in REWARDS:
        raise ConfigError(f"unknown reward {spec!r}{did_you_mean([spec], REWARDS)}; known rewards: {sorted(REWARDS)} "
                          "or a callable")
    return REWARDS[spec]()
