"""The action transforms between env actions in [-1, 1] and teacher weights on the simplex.

`to_simplex` is what `MultiTeacherKDEnv` applies to an action; `weights_to_action` inverts it
(exactly for "linear" and for equal shares under "select"; for "softmax" up to the clip of the
log-ratio range to [-1, 1]). Arrays are (..., M): (M,) per batch or (B, M) per sample.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["to_simplex", "weights_to_action"]


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
