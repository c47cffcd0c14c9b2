"""The action transforms between env actions in [-1, 1] and teacher weights on the simplex.

`to_simplex` is what `MultiTeacherKDEnv` applies to an action; `weights_to_action` inverts it
(exactly for "linear" and for equal shares under "select"; for "softmax" up to the clip of the
log-ratio range to [-1, 1]). Arrays are (..., M): (M,) per batch or (B, M) per sample.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["to_simplex", "weights_to_action", "as_real_array", "split_action", "check_weights", "check_seed",
           "check_reset_options"]


def to_simplex(a: np.ndarray, transform: str, temperature: float) -> np.ndarray:
    """"softmax": softmax(a / temperature); "linear": (a + 1) / sum(a + 1), uniform if all are -1;
    "select": teacher m is selected iff a_m > 0, selected teachers share the weight equally, none
    selected gives zeros (CE only)."""
    if transform == "select":
        chosen = (a > 0).astype(np.float64)
        return (chosen / np.maximum(chosen.sum(-1, keepdims=True), 1.0)).astype(np.float32)
    if transform == "softmax":
        z = a / temperature
        z = np.exp(z - z.max(-1, keepdims=True))
        return (z / z.sum(-1, keepdims=True)).astype(np.float32)
    shifted = a + 1.0
    total = shifted.sum(-1, keepdims=True)
    uniform = np.full_like(shifted, 1.0 / a.shape[-1])
    return np.where(total > 0, shifted / np.where(total > 0, total, 1.0), uniform).astype(np.float32)


def weights_to_action(parts: Sequence[np.ndarray], transform: str, temperature: float) -> np.ndarray:
    """The action whose `to_simplex` gives back each weight array of `parts`, concatenated along the
    last axis (logit weights first, then feature weights when they are separate)."""
    out = []
    for w in parts:
        w = np.asarray(w, dtype=np.float64)
        if transform == "select":
            out.append(np.where(w > 0, 1.0, -1.0))
        elif transform == "linear":
            out.append(2.0 * w / np.maximum(w.max(-1, keepdims=True), 1e-12) - 1.0)
        else:
            logw = np.log(np.maximum(w, 1e-12)) * temperature
            out.append(logw - logw.max(-1, keepdims=True) + 1.0)
    return np.clip(np.concatenate(out, axis=-1), -1.0, 1.0).astype(np.float32)


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
