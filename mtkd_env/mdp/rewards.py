"""Rewards by name. Each maps a `StepResult` (host values of one env step) to a Python float.

A reward says which measurements of the student it needs (`needs`, names from `MEASUREMENTS`);
the env takes exactly those, at reset and then on the schedule of their group:
- "probe" measurements every step (right after the update),
- "val" measurements every `reward_interval` steps and at the episode's end (only at the end
  for rewards with `val_schedule = "end"`).
Names starting with "twin_" are taken on the lockstep reference student (the engine's twin,
trained with equal weights on the same batches from the same initialisation), which the env
creates when a reward needs it.

Episode returns (γ = 1), with Φ = the paired potential of a twin reward:
- `probe_loss_drop`: total probe-loss drop of the episode;
- `kd_credit` / `kd_label_credit`: the sum over steps of each step's first-order advantage over equal
  weights for the probe loss / for the batch's own labels (dense, a sum over samples; `KDCredit`);
- `final_val_acc` / `final_val_loss`: the final validation accuracy / − CE;
- `twin_*`: Φ_T − Φ_0 = the final advantage of the agent's student over the twin (Φ_0 = 0: the
  two students start identical), with intermediate rewards that telescope into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Optional, Tuple

import numpy as np

from ..runtime.errors import ConfigError, did_you_mean

__all__ = ["StepResult", "Reward", "REWARDS", "MEASUREMENTS", "register_reward", "make_reward", "config_rewards",
           "paper_reward_vector", "needs_twin"]

MEASUREMENTS: Dict[str, str] = {
    "probe_loss": "probe", "twin_probe_loss": "probe",
    "val_acc": "val", "val_loss": "val", "twin_val_acc": "val", "twin_val_loss": "val",
}
"""Measurement name -> schedule group. probe_loss: CE on the fixed probe batch (eval mode);
val_acc / val_loss: accuracy and mean CE on the validation split; twin_*: the same on the twin."""


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
    terminal: bool = False                       # the episode's last step
    measured: Dict[str, float] = field(default_factory=dict)
    """Measurements taken on this step (after the update), by name (`MEASUREMENTS`)."""
    previous: Dict[str, float] = field(default_factory=dict)
    """The latest earlier value of every measurement the env takes (at reset: the initial one)."""
    credits: Dict[str, np.ndarray] = field(default_factory=dict)
    """Target -> (B, M) `DistillationEngine.kd_credit(target)` of the step's batch, before the update;
    the targets of the env's rewards with `needs_credit`."""
    weights: Optional[np.ndarray] = None
    """The step's logit weights, (M,) or (B, M)."""


class Reward:
    """Base class: subclasses say which measurements they need and compute a float."""

    needs: FrozenSet[str] = frozenset()
    needs_credit: bool = False
    """The env computes `DistillationEngine.kd_credit(credit_target)` before each update (`StepResult.kd_credit`)."""
    credit_target: str = "probe"
    val_schedule: str = "interval"
    """"interval": val measurements every `reward_interval` steps and at the end; "end": only at the end."""

    @property
    def needs_probe(self) -> bool:
        return any(MEASUREMENTS[n] == "probe" for n in self.needs)

    @property
    def needs_val(self) -> bool:
        return any(MEASUREMENTS[n] == "val" for n in self.needs)

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        raise NotImplementedError


REWARDS: Dict[str, type] = {}


def register_reward(name: str) -> Callable:
    def deco(cls: type) -> type:
        unknown = set(cls.needs) - set(MEASUREMENTS)
        if unknown:
            raise ValueError(f"reward {name!r} needs unknown measurement(s) {sorted(unknown)}; "
                             f"known: {sorted(MEASUREMENTS)}")
        REWARDS[name] = cls
        return cls

    return deco


def config_rewards(config) -> Tuple[Reward, Dict[str, Reward]]:
    """The env's reward and its logged rewards by name, from an `EnvConfig`'s `reward`,
    `log_rewards` and `granularity`."""
    return (make_reward(config.reward, config.granularity),
            {name: make_reward(name, config.granularity) for name in config.log_rewards})


def needs_twin(rewards) -> bool:
    """Whether any of these rewards measures the twin."""
    return any(n.startswith("twin_") for r in rewards for n in r.needs)


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
    Scalar = mean; the vector is `info["reward_vector"]`. Cost: none."""

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        vec = paper_reward_vector(result.per_sample_loss)
        return float(vec.mean()), {"reward_vector": vec.astype(np.float32)}


@register_reward("probe_loss_drop")
class ProbeLossDrop(Reward):
    """Decrease of the student's CE on a fixed held-out probe batch since the previous step's
    measurement (each taken right after the update; an episode's rewards sum to the total drop).
    Cost: one eval forward of the probe batch per step."""

    needs = frozenset({"probe_loss"})

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return float(result.probe_loss_before - result.probe_loss_after), {}


@register_reward("neg_loss")
class NegLoss(Reward):
    """Negative mean training loss of the step (pre-update, the weighted KD objective). Cost: none."""

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return float(-result.loss), {}


@register_reward("val_acc_delta")
class ValAccDelta(Reward):
    """Change of validation accuracy since the last evaluation, every `reward_interval` steps
    (and at the episode's end); 0 on other steps. Cost: one validation pass per interval."""

    needs = frozenset({"val_acc"})

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        if result.val_acc is None:
            return 0.0, {}
        return float(result.val_acc - result.prev_val_acc), {}


@register_reward("kd_credit")
class KDCredit(Reward):
    """Dense, per step: the first-order probe-loss drop of the step's logit-KD term under the agent's
    weights minus under equal weights, in units of the batch's credit spread:

        r_t = Σ_i Σ_m (w[i, m] − 1/M) c[i, m] / (B · (std(c − c̄) + ε)),   c = `kd_credit()` (B, M),

    c̄[i] the mean of row i (the part of the credit every weighting of that sample gets alike).

    0 for equal weights on every step, > 0 when the weights favour the KD terms whose gradient step
    would lower the student's probe loss. The scale makes every step count alike (raw credits shrink
    as the student converges). Per-sample credit: each row's share is its own term of the sum, so a
    policy that weights each sample's teachers is rewarded for that sample's choice only (in the
    sum). Cost: one probe forward/backward and one batch forward per step. First order, logit term
    only (not the feature term, not momentum); with `steps_per_action` > 1, the step's first batch.
    See docs/learned.md for what it does and does not reward."""

    needs_credit = True
    credit_target = "probe"

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        c = result.credits[self.credit_target]
        w = np.broadcast_to(np.asarray(result.weights, dtype=np.float64), c.shape)
        advantage = float(((w - 1.0 / c.shape[1]) * c).sum(axis=1).mean())
        spread = float((c - c.mean(axis=1, keepdims=True)).std())
        return advantage / (spread + 1e-12), {"kd_credit_advantage": advantage}


@register_reward("kd_label_credit")
class KDLabelCredit(KDCredit):
    """`kd_credit` with the label credit (`kd_credit(target="label")`): how much each weighted KD
    term lowers its own sample's CE, to first order in logit space. Dense and exact about agreement
    with the training labels; blind to generalisation (it would reward copying a teacher that
    memorised the training labels). Classification only."""

    credit_target = "label"


@register_reward("final_val_acc")
class FinalValAcc(Reward):
    """Terminal: the final validation accuracy on the last step, 0 elsewhere. Cost: none (the
    env measures it at the end anyway)."""

    needs = frozenset({"val_acc"})
    val_schedule = "end"

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return (float(result.measured["val_acc"]) if result.terminal else 0.0), {}


@register_reward("final_val_loss")
class FinalValLoss(Reward):
    """Terminal: minus the final validation CE on the last step, 0 elsewhere. Cost: none."""

    needs = frozenset({"val_loss"})
    val_schedule = "end"

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        return (-float(result.measured["val_loss"]) if result.terminal else 0.0), {}


class PairedPotential(Reward):
    """Potential-difference reward against the twin: Φ = `sign` · (agent − twin) of one
    measurement; reward = Φ(now) − Φ(previous measurement) when it was measured, 0 otherwise.
    Φ = 0 at reset (identical students), so an episode's return is the final advantage."""

    metric: str = ""
    sign: float = 1.0

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.metric:
            cls.needs = frozenset({cls.metric, "twin_" + cls.metric})

    def potential(self, values: Dict[str, float]) -> float:
        return self.sign * (values[self.metric] - values["twin_" + self.metric])

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        if self.metric not in result.measured:
            return 0.0, {}
        now = self.potential(result.measured)
        return float(now - self.potential(result.previous)), {"twin_advantage": float(now)}


@register_reward("twin_val_acc")
class TwinValAcc(PairedPotential):
    """Paired: change of (val accuracy − twin's val accuracy) since the last evaluation, every
    `reward_interval` steps and at the end. Return = final val-accuracy advantage over AVER.
    Cost: a twin student (one more student forward + backward per iteration; teachers shared)
    and two validation passes per interval."""

    metric = "val_acc"


@register_reward("twin_val_loss")
class TwinValLoss(PairedPotential):
    """Paired: change of (twin's val CE − val CE) since the last evaluation, every
    `reward_interval` steps and at the end. Return = final val-CE advantage over AVER.
    Cost: as `twin_val_acc`."""

    metric = "val_loss"
    sign = -1.0


@register_reward("twin_probe_loss")
class TwinProbeLoss(PairedPotential):
    """Paired, dense: change of (twin's probe CE − probe CE) every step. Return = final
    probe-CE advantage over AVER. Cost: a twin and two probe forwards per step."""

    metric = "probe_loss"
    sign = -1.0


@register_reward("twin_final_val_acc")
class TwinFinalValAcc(PairedPotential):
    """Paired, terminal: the final val-accuracy advantage over the twin on the last step, 0
    elsewhere (the sparse twin of `twin_val_acc`). Cost: a twin; validation only at the end."""

    metric = "val_acc"
    val_schedule = "end"

    def __call__(self, result: StepResult) -> Tuple[float, dict]:
        if not result.terminal:
            return 0.0, {}
        now = self.potential(result.measured)  # Φ_0 = 0: the twin starts as an exact copy
        return float(now), {"twin_advantage": float(now)}


class CallableReward(Reward):
    """Wraps a user function `f(StepResult) -> float` (it receives probe values too)."""

    needs = frozenset({"probe_loss"})

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
