"""Observation builders for the two granularities (their spaces: `mtkd_env.mdp.observations`).

Both return one flat float32 device tensor so that the env makes a single device->host copy.
"""

from __future__ import annotations

import torch

from ..mdp.observations import STUDENT_STATS, TEACHER_STATS
from .batch import Batch

__all__ = ["teacher_obs", "sample_obs"]


def teacher_obs(batch: Batch) -> torch.Tensor:
    """The device part of the observation, stat-major in the order of `TEACHER_STATS` (M columns
    each), then the student's statistics of `STUDENT_STATS` that live on the device (CE, accuracy):
    (5M + 2,). Progress and LR are host values the env appends."""
    per_teacher = {"ce": batch.teacher_ce.mean(0), "acc": batch.teacher_correct.mean(0),
                   "kl": batch.kl.detach().mean(0), "cos": batch.cos.mean(0),
                   "entropy": batch.teacher_entropy.mean(0)}
    student = {"ce": batch.student_ce.detach().mean(), "acc": batch.student_correct.mean()}
    return torch.cat([torch.stack([per_teacher[s] for s in TEACHER_STATS]).flatten(),
                      torch.stack([student[s] for s in STUDENT_STATS if s in student])]).float()


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
