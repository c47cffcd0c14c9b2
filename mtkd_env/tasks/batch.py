"""`Batch`: what one distillation iteration computes before the update, and how.

The per-sample quantities that both the loss and the agent's state need — KL (B, M), feature MSE
(B, M), cosine (B, M), teacher CE / entropy / correctness (B, M), student CE (B,) — from the
teachers' outputs (shared by every student trained on the batch: the agent's and its twin) and one
student's outputs. The engine's `prepare()` and its virtual-step API (`forward_with`) both build
their batches here, and `loss_terms` is the one weighted KD objective built from a batch.

`Batch` and `TeacherStats` are registered as pytrees, so `torch.func.vmap` maps these functions
over K stacked students (`mtkd_env.engine.student_stack`): the batched engine calls the same `measure`
and `loss_terms` with a leading K dimension on every tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..models import ModelOutput

__all__ = ["Batch", "TeacherStats", "teacher_stats", "measure", "feature_terms", "loss_terms", "full_precision", "keep_feature_maps"]


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision outputs in float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class Batch:
    """Everything computed for one batch before the update. Shapes: B batch, M teachers, C classes."""

    x: torch.Tensor                      # (B, ...) inputs
    y: torch.Tensor                      # (B,) labels
    index: torch.Tensor                  # (B,) dataset indices (with teacher_views: view rows)
    teacher_logits: torch.Tensor         # (M, B, C), no grad
    teacher_embeddings: List[torch.Tensor]  # M x (B, D_m), no grad
    student_logits: torch.Tensor         # (B, C), with grad
    student_ce: torch.Tensor             # (B,), with grad
    kl: torch.Tensor                     # (B, M) T^2 KL(p_t^m || p_s), with grad
    feat_mse: Optional[torch.Tensor]     # (B, M) with grad, None when feature KD is off
    cos: torch.Tensor                    # (B, M) cosine(GAP(proj_m(F_s)), e_t^m), detached; zeros without
                                         # feature KD or when the observation does not show it
    teacher_ce: torch.Tensor             # (B, M) CE of teacher logits vs labels (T = 1)
    teacher_entropy: torch.Tensor        # (B, M) entropy of softmax(teacher logits) (T = 1)
    teacher_correct: torch.Tensor        # (B, M) float 0/1
    student_correct: torch.Tensor        # (B,) float 0/1
    student_embedding: Optional[torch.Tensor] = None   # (B, D_s) pooled student feature map, detached
    # Kept only with `EnvConfig.keep_feature_maps` (and always by `forward_with`), all detached:
    student_feature_map: Optional[torch.Tensor] = None  # (B, C_s, H_s, W_s)
    teacher_feature_maps: Optional[List[torch.Tensor]] = None  # M x (B, C_m, H_m, W_m)
    projected: Optional[List[torch.Tensor]] = None     # M x (B, C_m, H_m, W_m) Phi_m(F_s); None without feature KD


@dataclass
class TeacherStats:
    """The teachers' side of a batch (no grad), computed once for every student trained on it."""

    logits: torch.Tensor                 # (M, B, C)
    log_pt: torch.Tensor                 # (M, B, C) log softmax(logits / T)
    pt: torch.Tensor                     # (M, B, C) softmax(logits / T)
    entropy: torch.Tensor                # (B, M) at T = 1
    ce: torch.Tensor                     # (B, M) at T = 1
    correct: torch.Tensor                # (B, M) float 0/1


def _register_pytrees() -> None:
    from torch.utils import _pytree

    for cls in (Batch, TeacherStats):
        if hasattr(_pytree, "register_dataclass"):
            _pytree.register_dataclass(cls)
        else:  # torch < 2.4
            names = [f.name for f in dataclasses.fields(cls)]
            _pytree.register_pytree_node(cls, lambda b, names=names: ([getattr(b, n) for n in names], None),
                                         lambda values, _, cls=cls: cls(*values))


_register_pytrees()


@torch.no_grad()
def teacher_stats(t_outs: List[ModelOutput], y: torch.Tensor, temperature: float) -> TeacherStats:
    t_logits = full_precision(torch.stack([o.logits for o in t_outs]))      # (M, B, C)
    log_pt = F.log_softmax(t_logits / temperature, dim=-1)
    logp1 = F.log_softmax(t_logits, dim=-1)
    return TeacherStats(t_logits, log_pt, log_pt.exp(), -(logp1.exp() * logp1).sum(-1).T,
                        -logp1.gather(-1, y.expand(len(t_outs), -1)[..., None]).squeeze(-1).T,
                        (t_logits.argmax(-1) == y).T.float())


def measure(x: torch.Tensor, y: torch.Tensor, index: Optional[torch.Tensor], t_outs: List[ModelOutput],
            teacher: TeacherStats, s_out: ModelOutput, projected: Optional[List[torch.Tensor]],
            temperature: float, keep_maps: bool, with_cos: bool = True) -> Batch:
    """The per-sample quantities of a batch from the teachers' and one student's outputs
    (`projected`: the student's map through each teacher's projector, None without feature KD).
    `with_cos=False` leaves `cos` at zeros: only the observation reads it, and one that does not
    show it need not pay M pooled cosines per batch."""
    s_logits = full_precision(s_out.logits)
    log_ps = F.log_softmax(s_logits / temperature, dim=-1)                 # (B, C)
    kl = temperature ** 2 * (teacher.pt * (teacher.log_pt - log_ps)).sum(-1).T   # (B, M)
    student_ce = F.cross_entropy(s_logits, y, reduction="none")
    feat_mse = None
    cos = torch.zeros_like(teacher.ce)
    if projected is not None:
        feat_mse, cos_all = feature_terms(projected, t_outs, with_cos)
        if cos_all is not None:
            cos = cos_all
    student_correct = (s_logits.detach().argmax(-1) == y).float()
    batch = Batch(x, y, index, teacher.logits, [o.embedding for o in t_outs], s_logits, student_ce,
                  kl, feat_mse, cos, teacher.ce, teacher.entropy, teacher.correct, student_correct,
                  student_embedding=s_out.embedding.detach())
    return keep_feature_maps(batch, s_out, t_outs, projected) if keep_maps else batch


def keep_feature_maps(batch: "Batch", s_out: ModelOutput, t_outs: List[ModelOutput],
                      projected: Optional[List[torch.Tensor]]) -> "Batch":
    """`batch` with the student's and teachers' feature maps and the projected student maps kept
    (detached), for callers that need them after the step (`keep_maps`); every task uses this one."""
    batch.student_feature_map = s_out.feature_map.detach()
    batch.teacher_feature_maps = [o.feature_map for o in t_outs]
    batch.projected = None if projected is None else [p.detach() for p in projected]
    return batch


def feature_terms(projected: List[torch.Tensor], t_outs: List[ModelOutput], with_cos: bool = True):
    """Feature MSE (..., B, M) with grad and, with `with_cos`, the cosine (..., B, M) detached (else
    None), from the projected student maps M x (..., B, C_m, H_m, W_m) and the teachers' outputs
    (any leading dimensions that broadcast: the batched engine's grouped students pass (K, B, ...) maps)."""
    # mse_loss(reduction="none") is (p - t)^2 and its gradient 2 (p - t) g bit for bit, in one pass
    # over the maps each way instead of three.
    feat_mse = torch.stack([F.mse_loss(*torch.broadcast_tensors(full_precision(p), full_precision(o.feature_map)),
                                       reduction="none").flatten(-3).mean(-1)
                            for p, o in zip(projected, t_outs)], dim=-1)
    if not with_cos:
        return feat_mse, None
    with torch.no_grad():
        cos = torch.stack([F.cosine_similarity(full_precision(p).mean((-2, -1)), full_precision(o.embedding), dim=-1)
                           for p, o in zip(projected, t_outs)], dim=-1)
    return feat_mse, cos


def loss_terms(batch: Batch, w_logit: torch.Tensor, w_feat: torch.Tensor, kd_alpha: float,
               feat_beta: float):
    """Per-sample total loss (B,) = CE + kd_alpha * sum_m wL*KL + feat_beta * sum_m wF*MSE, and the
    batch-mean KD and feature terms (0-d).

    `w_logit`, `w_feat`: (M,) or (B, M) weights; broadcast over the batch.
    """
    kd = (w_logit * batch.kl).sum(-1)
    total = batch.student_ce + kd_alpha * kd
    feat = torch.zeros_like(kd)
    if batch.feat_mse is not None:
        feat = (w_feat * batch.feat_mse).sum(-1)
        total = total + feat_beta * feat
    return total, kd.mean(), feat.mean()
