"""The observation spaces of the two granularities: feature names, columns, bounds and layout.

The tensors that fill them are built from a `Batch` by `mtkd_env.engine.observe`.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["TEACHER_STATS", "STUDENT_STATS", "OBS_FEATURES", "teacher_columns", "teacher_bounds",
           "teacher_feature_names", "sample_layout", "sample_bounds", "OBS_LIMIT"]

TEACHER_STATS: Tuple[str, ...] = ("ce", "acc", "kl", "cos", "entropy")
"""Per-teacher batch means: CE vs labels, accuracy, T^2 KL(teacher||student), cosine between the
projected student embedding and the teacher embedding (0 without feature KD), entropy (T = 1)."""
STUDENT_STATS: Tuple[str, ...] = ("ce", "acc", "progress", "lr")
"""Student CE and accuracy on the batch (before the update), progress t/T, current LR."""

OBS_FEATURES: Tuple[str, ...] = TEACHER_STATS + ("student_ce", "student_acc", "progress", "lr")
"""Names for `EnvConfig.obs_features`: a per-teacher statistic selects its M columns."""

OBS_LIMIT = 1.0e4
"""Finite bound for unbounded raw quantities (losses, logits, embeddings); values are clipped."""

_STAT_BOUNDS = {"ce": (0.0, 50.0), "acc": (0.0, 1.0), "kl": (0.0, 100.0), "cos": (-1.0, 1.0),
                "entropy": (0.0, 20.0), "progress": (0.0, 1.0), "lr": (0.0, 10.0)}


def teacher_feature_names(teacher_names: Sequence[str]) -> List[str]:
    names = [f"teacher{m}[{n}]/{s}" for s in TEACHER_STATS for m, n in enumerate(teacher_names)]
    return names + [f"student/{s}" for s in STUDENT_STATS]


def teacher_columns(num_teachers: int, features: Sequence[str]) -> np.ndarray:
    """Column indices of `features` (names from `OBS_FEATURES`, in the order given) in the full
    teacher-granularity observation (5M + 4)."""
    cols = []
    for name in features:
        if name in TEACHER_STATS:
            k = TEACHER_STATS.index(name)
            cols += range(k * num_teachers, (k + 1) * num_teachers)
        else:
            cols.append(len(TEACHER_STATS) * num_teachers + OBS_FEATURES.index(name) - len(TEACHER_STATS))
    return np.array(cols, dtype=np.int64)


def teacher_bounds(num_teachers: int) -> Tuple[np.ndarray, np.ndarray]:
    bounds = [_STAT_BOUNDS[s] for s in TEACHER_STATS for _ in range(num_teachers)]
    bounds += [_STAT_BOUNDS[s] for s in STUDENT_STATS]
    low, high = np.array(bounds, dtype=np.float32).T
    return low, high


def sample_layout(num_classes: int, embedding_dims: Sequence[int], embeddings: bool,
                  logits: bool, student_dim: int = 0) -> List[Tuple[int, str, slice]]:
    """(teacher, quantity, column slice) for each block of a sample-granularity state row.

    Per teacher, in the official code's order: cos, kl, ce, [embedding (D_m)], [logits (C)]; then,
    when `student_dim` > 0, the student's pooled embedding as (-1, "student_embedding", slice).
    """
    layout, col = [], 0
    for m, dim in enumerate(embedding_dims):
        blocks = [("cos", 1), ("kl", 1), ("ce", 1)]
        if embeddings:
            blocks.append(("embedding", dim))
        if logits:
            blocks.append(("logits", num_classes))
        for name, width in blocks:
            layout.append((m, name, slice(col, col + width)))
            col += width
    if student_dim:
        layout.append((-1, "student_embedding", slice(col, col + student_dim)))
    return layout


def sample_bounds(layout, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    width = layout[-1][2].stop
    low = np.full((width,), -OBS_LIMIT, dtype=np.float32)
    high = np.full((width,), OBS_LIMIT, dtype=np.float32)
    for _, name, cols in layout:
        if name == "cos":
            low[cols], high[cols] = -1.0, 1.0
        elif name in ("kl", "ce"):
            low[cols] = 0.0
    return np.tile(low, (batch_size, 1)), np.tile(high, (batch_size, 1))
