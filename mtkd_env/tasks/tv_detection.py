"""The detection task on torchvision's detectors (`mtkd_env.models.tv_detection`): their `DetectorKind`.

Per image i and teacher m (B images, M teachers; the `Batch` fields keep their meaning):

- **student term / teacher "ce"** (B,), (B, M): the detector's own training loss of the image
  (`Family.image_losses`: FCOS/RetinaNet `compute_loss`, Faster R-CNN's RPN + RoI losses);
- **score** ("acc", (B, M)): the image's recall at IoU 0.5 of its postprocessed detections (the
  detector's own `postprocess_detections` and thresholds): the fraction of its boxes that a
  detection of the same class overlaps by IoU >= 0.5; an image without objects scores 1 without
  detections, else 0. (The location accuracy of the one-grid detectors has no counterpart in
  Faster R-CNN, and this one reads every family the same way.)
- **dense-output KD** `kl` (B, M), one-stage families (FCOS, RetinaNet) whose teachers and student
  share the anchors (same family, input size and FPN levels): `T^2 * mean_l sum_c KL(Bern(sigmoid(z_m/T))
  || Bern(sigmoid(s/T)))`, the per-class **binary** KL of the sigmoid class outputs, summed over the
  classes and averaged over the L anchors. Why binary and not a softmax over [background, classes]:
  these heads are trained with a per-class sigmoid focal loss, so a class probability is an
  independent Bernoulli (several classes may be likely at one anchor, all may be unlikely), and
  the binary KL compares exactly what the head predicts; a softmax would invent a background logit
  and couple classes the head keeps apart. (It is the KL of the two-way softmax over [0, z/T], which
  is how `TeacherStats.log_pt` (M, B, L, C, 2) holds it.)
  Faster R-CNN has no dense class outputs (its class scores are per RoI proposal, and the
  proposals differ between models): `kl` is 0 and KD is on the FPN features only.
- **feature KD** `feat_mse`, `cos` (B, M): the engine's projectors on the finest FPN level, for
  every family (`mtkd_env.tasks.batch.feature_terms`).
- **entropy** (B, M): one-stage: the binary entropies of the class outputs summed over the
  classes, averaged over the anchors; Faster R-CNN: the RPN objectness's binary entropy averaged
  over the anchors.
- **teacher_logits** (M, B, C): one-stage: the class logits averaged over the anchors (as the
  one-grid detectors); Faster R-CNN: each class's highest detection score in the image (0 without one).

A pool is either one anchor layout of one one-stage family, or Faster R-CNN only: any other mix is
a one-line `ConfigError` at the first batch (dense-output KD would be undefined; there is no silent
fall-back to feature KD).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..models.tv_detection import FAMILIES, TVDetectionOutput
from ..runtime.errors import ConfigError
from .batch import Batch, TeacherStats, feature_terms, full_precision, keep_feature_maps
from .detection import DetectorKind, register_kind

__all__ = ["Torchvision", "recall_at_half", "binary_log_probs", "check_layouts"]


def binary_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) sigmoid logits -> (..., C, 2) log [p, 1 - p]: the log-softmax over [0, z] per class."""
    return torch.stack([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=-1)


def recall_at_half(detections: List[dict], y: torch.Tensor) -> torch.Tensor:
    """(B,) per image: the fraction of its boxes y (B, K, 5) with a same-class detection at IoU >= 0.5
    (an image without boxes: 1 without detections, else 0)."""
    from torchvision.ops import box_iou

    scores = []
    for d, t in zip(detections, y):
        real = t[:, 0] >= 0
        if not bool(real.any()):
            scores.append(float(len(d["labels"]) == 0))
            continue
        same_class = t[real, 0].long()[:, None] == d["labels"][None]
        hit = (box_iou(t[real, 1:].float(), d["boxes"].float()) >= 0.5) & same_class
        scores.append(float(hit.any(1).float().mean()))
    return torch.tensor(scores, device=y.device)


def _layout(out: TVDetectionOutput) -> Optional[Tuple]:
    """(family, anchors, classes) of a one-stage output; None for Faster R-CNN."""
    return None if out.logits is None else (out.family, *out.logits.shape[1:])


def check_layouts(outs: List[TVDetectionOutput]) -> bool:
    """Whether the outputs (teachers', then the student's) have dense outputs to distil (one layout,
    the same anchors) rather than none (Faster R-CNN only); any other mix is a one-line `ConfigError`."""
    layouts = [_layout(o) for o in outs]
    same = all(layout == layouts[0] for layout in layouts) and (
        layouts[0] is None or all(torch.equal(o.parts.anchors[0], outs[0].parts.anchors[0]) for o in outs))
    if not same:
        names = ["faster_rcnn (no dense outputs)" if lay is None else f"{lay[0]} ({lay[1]} anchors x {lay[2]} classes)"
                 for lay in layouts]
        raise ConfigError(f"detection KD: the teachers and the student have different anchor layouts ({names}); "
                          f"dense-output KD needs one head family with the same anchors (same input size and FPN "
                          f"levels), or Faster R-CNN for every model (FPN-feature KD only)")
    return layouts[0] is not None


def _class_summary(out: TVDetectionOutput, detections: List[dict]) -> torch.Tensor:
    """(B, C): the class logits averaged over the anchors (one-stage; with grad), or each class's
    highest detection score (Faster R-CNN)."""
    if out.logits is not None:
        return full_precision(out.logits).mean(1)
    classes = out.parts.detector.roi_heads.box_predictor.cls_score.out_features - 1
    summary = torch.zeros(len(detections), classes, device=out.feature_map.device)
    for row, d in zip(summary, detections):
        row.scatter_reduce_(0, d["labels"], d["scores"].to(row.dtype), "amax")
    return summary


@torch.no_grad()
def _entropy(out: TVDetectionOutput) -> torch.Tensor:
    """(B,) the mean binary entropy per anchor (summed over classes for the one-stage heads)."""
    if out.logits is not None:
        logp = binary_log_probs(full_precision(out.logits))
        return -(logp.exp() * logp).sum((-1, -2)).mean(-1)
    objectness, _ = out.parts.detector.rpn.head(list(out.parts.features.values()))
    logp = binary_log_probs(torch.cat([o.flatten(1) for o in objectness], 1).float())
    return -(logp.exp() * logp).sum(-1).mean(-1)


@register_kind(TVDetectionOutput)
class Torchvision(DetectorKind):
    """torchvision's FCOS / RetinaNet / Faster R-CNN (the module docstring's definitions)."""

    def supervised_loss(self, out, y):
        return FAMILIES[out.family].image_losses(out, y).mean()

    def correct(self, out, y):
        return recall_at_half(FAMILIES[out.family].detections(out), y).sum()

    @torch.no_grad()
    def teacher_stats(self, t_outs, y, temperature):
        dense = check_layouts(t_outs)
        detections = [FAMILIES[o.family].detections(o) for o in t_outs]
        loss = torch.stack([FAMILIES[o.family].image_losses(o, y).float() for o in t_outs])          # (M, B)
        if dense:
            log_pt = binary_log_probs(full_precision(torch.stack([o.logits for o in t_outs])) / temperature)
        else:  # nothing dense to distil: an empty distribution, whose KL is 0
            log_pt = loss.new_zeros(*loss.shape, 0)
        summary = torch.stack([_class_summary(o, d) for o, d in zip(t_outs, detections)])          # (M, B, C)
        entropy = torch.stack([_entropy(o) for o in t_outs])
        correct = torch.stack([recall_at_half(d, y) for d in detections])
        return TeacherStats(summary, log_pt, log_pt.exp(), entropy.T, loss.T, correct.T)

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos=True):
        family = FAMILIES[s_out.family]
        if check_layouts([*t_outs, s_out]):
            log_ps = binary_log_probs(full_precision(s_out.logits) / temperature)          # (B, L, C, 2)
            kl = (temperature ** 2 * (teacher.pt * (teacher.log_pt - log_ps)).sum((-1, -2)).mean(-1)).T   # (B, M)
        else:
            kl = torch.zeros_like(teacher.ce)
        student_ce = family.image_losses(s_out, y)
        feat_mse, cos = None, torch.zeros_like(teacher.ce)
        if projected is not None:
            feat_mse, cos_all = feature_terms(projected, t_outs, with_cos)
            cos = cos if cos_all is None else cos_all
        detections = family.detections(s_out)
        batch = Batch(x, y, index, teacher.logits, [o.embedding for o in t_outs], _class_summary(s_out, detections),
                      student_ce, kl, feat_mse, cos, teacher.ce, teacher.entropy, teacher.correct,
                      recall_at_half(detections, y), student_embedding=s_out.embedding.detach())
        return keep_feature_maps(batch, s_out, t_outs, projected) if keep_maps else batch

    def loss_and_score(self, out, y):
        family = FAMILIES[out.family]
        return family.image_losses(out, y), recall_at_half(family.detections(out), y)

    def detections(self, out):
        return FAMILIES[out.family].detections(out)
