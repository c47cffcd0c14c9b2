"""The action transforms between env actions in [-1, 1] and teacher weights on the simplex.

`to_simplex` is what `MultiTeacherKDEnv` applies to an action; `weights_to_action` inverts it
(exactly for "linear" and for equal shares under "select"; for "softmax" up to the clip of the
log-ratio range to [-1, 1]). Arrays are (..., M): (M,) per batch or (B, M) per sample.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["to_simplex", "weights_to_action", "split_action", "check_weights"]


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


def split_action(action, shape: Tuple[int, ...], num_teachers: int, separate: bool, granularity: str
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """`action` checked against the action space's `shape`, clipped to [-1, 1], as its (logit part,
    feature part); the parts are the same array without separate feature weights."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"action has shape {a.shape}; expected {shape} ({'(B, ' if granularity == 'sample' else '('}"
                         f"{'2M' if separate else 'M'}) with M = {num_teachers})")
    if not np.all(np.isfinite(a)):
        raise ValueError("action contains NaN or inf; expected finite values in [-1, 1]")
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
