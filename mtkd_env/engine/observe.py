"""Observation builders for the two granularities (their spaces: `mtkd_env.mdp.observations`).

Both return one flat float32 device tensor so that the env makes a single device->host copy.
"""

from __future__ import annotations

import torch

from ..mdp.observations import STUDENT_STATS, TEACHER_STATS
from ..tasks.batch import Batch

__all__ = ["teacher_obs", "sample_obs"]


def teacher_obs(batch: Batch) -> torch.Tensor:
    """The device part of the observation, stat-major in the order of `TEACHER_STATS` (M columns
    each), then the student's statistics of `STUDENT_STATS` that live on the device (CE, accuracy):
    (5M + 2,). Progress and LR are host values the env appends."""
    per_teacher = {"ce": batch.teacher_ce, "acc": batch.teacher_correct, "kl": batch.kl.detach(), "cos": batch.cos,
                   "entropy": batch.teacher_entropy}                                   # each (B, M)
    student = {"ce": batch.student_ce.detach(), "acc": batch.student_correct}           # each (B,)
    columns = [per_teacher[s] for s in TEACHER_STATS] + [student[s][:, None] for s in STUDENT_STATS if s in student]
    return torch.cat(columns, dim=1).float().mean(0)  # one batch mean over the (B, 5M + 2) columns


def sample_obs(batch: Batch, embeddings: bool, logits: bool, student: bool = False) -> torch.Tensor:
    """(B, F) per-sample state: for each teacher [cos, kl, ce, embedding, logits], then (with
    `student`) the student's pooled embedding."""
    cols = []
    for m in range(batch.teacher_logits.shape[0]):
        cols += [batch.cos[:, m:m + 1], batch.kl.detach()[:, m:m + 1], batch.teacher_ce[:, m:m + 1]]
        if embeddings:
            cols.append(batch.teacher_embeddings[m])
        if logits:
            cols.append(batch.teacher_logits[m])
    if student:
        cols.append(batch.student_embedding)
    return torch.cat(cols, dim=1).float()
