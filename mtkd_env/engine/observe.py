"""Observation builders for the two granularities (their spaces: `mtkd_env.mdp.observations`).

Both return one flat float32 device tensor so that the env makes a single device->host copy.
"""

from __future__ import annotations

import torch

from .batch import Batch

__all__ = ["teacher_obs", "sample_obs"]


def teacher_obs(batch: Batch) -> torch.Tensor:
    """(5M + 2,) device part of the observation, stat-major: all teachers' CE, then accuracy, KL,
    cos, entropy; then student CE and accuracy. Progress and LR are host values the env appends."""
    per_teacher = torch.stack([batch.teacher_ce.mean(0), batch.teacher_correct.mean(0),
                               batch.kl.detach().mean(0), batch.cos.mean(0),
                               batch.teacher_entropy.mean(0)])               # (5, M)
    student = torch.stack([batch.student_ce.detach().mean(), batch.student_correct.mean()])
    return torch.cat([per_teacher.flatten(), student]).float()


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
