"""The action transforms between env actions in [-1, 1] and teacher weights on the simplex.

`ACTION_TRANSFORMS` is the one registry of transform names (`EnvConfig.action_transform` checks
against it). `ActionMap`, built once per env, turns an action into weights in one visit:
`to_weights` is what `MultiTeacherKDEnv` applies to an action; `to_action` inverts it (exactly for
"linear" and for equal shares under "select"; for "softmax" up to the clip of the log-ratio range
to [-1, 1]). Arrays are (..., M): (M,) per batch or (B, M) per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ACTION_TRANSFORMS", "Transform", "ActionMap", "to_simplex", "weights_to_action", "as_real_array",
           "split_action", "check_weights", "check_seed", "check_reset_options"]


def _softmax(a: np.ndarray, temperature: float) -> np.ndarray:
    z = a / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def _softmax_inverse(w: np.ndarray, temperature: float) -> np.ndarray:
    logw = np.log(np.maximum(w, 1e-12)) * temperature
    return logw - logw.max(-1, keepdims=True) + 1.0


def _linear(a: np.ndarray, temperature: float) -> np.ndarray:
    shifted = a + 1.0
    total = shifted.sum(-1, keepdims=True)
    uniform = np.full_like(shifted, 1.0 / a.shape[-1])
    return np.where(total > 0, shifted / np.where(total > 0, total, 1.0), uniform).astype(np.float32)


def _linear_inverse(w: np.ndarray, temperature: float) -> np.ndarray:
    return 2.0 * w / np.maximum(w.max(-1, keepdims=True), 1e-12) - 1.0


def _select(a: np.ndarray, temperature: float) -> np.ndarray:
    chosen = (a > 0).astype(np.float64)
    return (chosen / np.maximum(chosen.sum(-1, keepdims=True), 1.0)).astype(np.float32)


def _select_inverse(w: np.ndarray, temperature: float) -> np.ndarray:
    return np.where(w > 0, 1.0, -1.0)


class Transform(NamedTuple):
    """One action transform: both directions, each `f(array, temperature)` on the last axis."""

    to_simplex: Callable[[np.ndarray, float], np.ndarray]
    """Action part in [-1, 1] -> float32 weights on the simplex."""
    to_action: Callable[[np.ndarray, float], np.ndarray]
    """Float64 weights -> the action part that maps back to them (before the clip to [-1, 1])."""


ACTION_TRANSFORMS: Dict[str, Transform] = {
    "softmax": Transform(_softmax, _softmax_inverse),
    "linear": Transform(_linear, _linear_inverse),
    "select": Transform(_select, _select_inverse),
}
"""The names `EnvConfig.action_transform` accepts. "softmax": softmax(a / temperature); "linear":
(a + 1) / sum(a + 1), uniform if all are -1; "select": teacher m is selected iff a_m > 0, selected
teachers share the weight equally, none selected gives zeros (CE only)."""


def to_simplex(a: np.ndarray, transform: str, temperature: float) -> np.ndarray:
    """The weights of action part `a` under `transform` (a name of `ACTION_TRANSFORMS`)."""
    return ACTION_TRANSFORMS[transform].to_simplex(a, temperature)


def weights_to_action(parts: Sequence[np.ndarray], transform: str, temperature: float) -> np.ndarray:
    """The action whose `to_simplex` gives back each weight array of `parts`, concatenated along the
    last axis (logit weights first, then feature weights when they are separate)."""
    inverse = ACTION_TRANSFORMS[transform].to_action
    out = [inverse(np.asarray(w, dtype=np.float64), temperature) for w in parts]
    return np.clip(np.concatenate(out, axis=-1), -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ActionMap:
    """An env's actions and weights, fixed at construction: the action space's shape, the
    transform, and the weight shapes a step accepts."""

    transform: str
    temperature: float
    num_teachers: int
    batch_size: int
    separate: bool
    """Separate feature weights: the action is (..., 2M), logit weights first."""
    granularity: str

    @property
    def width(self) -> int:
        return 2 * self.num_teachers if self.separate else self.num_teachers

    @property
    def shape(self) -> Tuple[int, ...]:
        """The action space's shape: (width,) per batch, (B, width) per sample."""
        return (self.width,) if self.granularity == "teacher" else (self.batch_size, self.width)

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        m = self.num_teachers
        return (m,) if self.granularity == "teacher" else (self.batch_size, m)

    def to_weights(self, action) -> Tuple[np.ndarray, np.ndarray]:
        """Validate `action` and map it to (logit weights, feature weights) on the simplex."""
        logit_part, feat_part = split_action(action, self.shape, self.num_teachers, self.separate, self.granularity)
        simplex = ACTION_TRANSFORMS[self.transform].to_simplex
        return simplex(logit_part, self.temperature), simplex(feat_part, self.temperature)

    def to_action(self, w_logit: np.ndarray, w_feat: Optional[np.ndarray] = None) -> np.ndarray:
        """An action that maps back to these weights (see the module docstring for how exactly)."""
        parts = [w_logit] + ([w_feat if w_feat is not None else w_logit] if self.separate else [])
        parts = [np.broadcast_to(np.asarray(w, dtype=np.float64), self.weight_shape) for w in parts]
        return weights_to_action(parts, self.transform, self.temperature)

    def check(self, name: str, w) -> np.ndarray:
        """Weights `w` given directly to a step, checked (`check_weights`): (M,), or per sample also (B, M)."""
        shapes = [(self.num_teachers,)] + ([(self.batch_size, self.num_teachers)]
                                           if self.granularity == "sample" else [])
        return check_weights(name, w, shapes, self.num_teachers)


def as_real_array(values, name: str) -> np.ndarray:
    """`values` as a float64 array if they are real numbers (float or int dtype); else a one-line
    `ValueError` naming the dtype (strings, booleans, complex numbers and objects are refused rather
    than converted or truncated)."""
    raw = values if isinstance(values, np.ndarray) else None
    if raw is None:
        try:
            raw = np.asarray(values)
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise ValueError(f"{name} is not a rectangular array of numbers ({str(exc).splitlines()[0][:60]}); "
                             f"expected real numbers in [-1, 1]") from None
    if raw.dtype.kind not in "fiu":
        raise ValueError(f"{name} has dtype {raw.dtype}; expected real numbers (a float or int array) in [-1, 1]")
    return raw.astype(np.float64, copy=False)


def split_action(action, shape: Tuple[int, ...], num_teachers: int, separate: bool, granularity: str
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """`action` checked against the action space's `shape`, clipped to [-1, 1], as its (logit part,
    feature part); the parts are the same array without separate feature weights."""
    a = as_real_array(action, "action")
    if a.shape != shape:
        raise ValueError(f"action has shape {a.shape}; expected {shape} ({'(B, ' if granularity == 'sample' else '('}"
                         f"{'2M' if separate else 'M'}) with M = {num_teachers})")
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        where = ", ".join(str(int(i)) for i in bad[0])
        raise ValueError(f"action contains NaN or inf (action[{where}] = {a[tuple(bad[0])]}, {len(bad)} such "
                         f"entries); expected finite values in [-1, 1]")
    a = np.clip(a, -1.0, 1.0)
    logit_part = a[..., :num_teachers]
    return logit_part, (a[..., num_teachers:] if separate else logit_part)


def check_weights(name: str, w, shapes: List[Tuple[int, ...]], num_teachers: int) -> np.ndarray:
    """`w` as float32 if its shape is one of `shapes` and it is finite and non-negative; else a
    one-line `ValueError` naming the first bad entry."""
    arr = np.asarray(w, dtype=np.float32)
    if arr.shape not in shapes:
        raise ValueError(f"{name} has shape {arr.shape}; expected one of {shapes} (M = {num_teachers})")
    bad = np.argwhere(~(np.isfinite(arr) & (arr >= 0)))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name} must be finite and non-negative; {name}[{', '.join(map(str, where))}] = "
                         f"{arr[where]!r} ({len(bad)} bad entries)")
    return arr


# --- the other inputs of the env API: reset's seed and options ------------------------------------
def check_seed(seed: Any, name: str = "seed") -> int:
    """`seed` as an int if it is an integer >= 0 (a Python or NumPy integer, not a bool); else a
    one-line `ValueError` saying what was expected (before any work of `reset`)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name}: expected None or an integer >= 0, got {type(seed).__name__} {str(seed)[:40]!r}")
    if seed < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {int(seed)}")
    return int(seed)


def check_reset_options(options: Any, known: Sequence[str], env: str) -> None:
    """`options` of `reset` is None or a dict whose keys are among `known`; else a one-line `ValueError`."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ValueError(f"options: expected None or a dict, got {type(options).__name__} {str(options)[:40]!r}")
    unknown = sorted(str(k)[:40] for k in options if k not in known)
    if unknown:
        expected = f"one of {list(known)}" if known else "none (it takes no options)"
        raise ValueError(f"options: unknown key(s) {unknown} for {env}.reset; expected {expected}")
