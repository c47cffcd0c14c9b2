"""`segmentation`: per-pixel class maps, distilled pixel by pixel, scored by mIoU.

Models return `ModelOutput(logits (B, C, H, W) at the input resolution, feature_map, embedding)`;
targets are masks y (B, H, W) of class ids, `IGNORE_INDEX` (255) where a pixel has no label
(Cityscapes' and ADE20K's convention).

Per image i (V_i its valid pixels; an image without any gives 0):

- logit KD: `KL_im = T^2 * mean_{p in V_i} KL(softmax(z_m(p) / T) || softmax(s(p) / T))`, the
  pixel-wise KD of the dense-KD literature averaged over valid pixels, kept per image so that a
  weight per image (and per teacher) multiplies it;
- feature KD: the projected-feature MSE of every task (`mtkd_env.tasks.batch.feature_terms`);
- statistics (B, M): teacher CE vs the mask (mean over valid pixels, T = 1), pixel accuracy,
  mean pixel entropy; `teacher_logits` (M, B, C) are the teachers' logits averaged over the valid
  pixels (the per-image vector that the sample state and the formula baselines read).

The metric is the mean IoU over classes (torchmetrics' `MulticlassJaccardIndex`, macro average,
ignoring `IGNORE_INDEX`); `pixel_accuracy` is reported beside it.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn
import torch.nn.functional as F

from ..models import ModelOutput
from ..models.accuracy import Forward
from ..runtime.errors import ConfigError
from . import Task, image_mean, register_task
from .batch import Batch, TeacherStats, feature_terms, full_precision, keep_feature_maps

__all__ = ["Segmentation", "IGNORE_INDEX", "pixel_kd", "check_masks"]

IGNORE_INDEX = 255
"""Mask value of unlabelled pixels: no loss, no statistic, not in the metric."""


def _valid(y: torch.Tensor):
    valid = y != IGNORE_INDEX
    return valid, y.masked_fill(~valid, 0)


def _correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, H, W): 1.0 where the target class's logit is the largest (the argmax is right; a tie counts as
    right), else 0.0, for logits (B, C, H, W) and class ids (B, H, W). `argmax` over a dimension that
    is not the last is ten times slower on the CPU than `amax` + `gather`."""
    return (logits.gather(1, target[:, None]).squeeze(1) >= logits.amax(1)).float()


def _image_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(..., B, C, H, W) -> (..., B, C): the logits averaged over each image's valid pixels."""
    v = valid[:, None].to(logits.dtype)
    return (logits * v).sum((-2, -1)) / v.sum((-2, -1)).clamp_min(1.0)


def pixel_kd(teacher_pt: torch.Tensor, teacher_log_pt: torch.Tensor, student_logits: torch.Tensor,
             valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL per pixel averaged over each image's valid pixels: teacher probabilities at T
    (M, B, C, H, W) (and their logs), student logits (B, C, H, W), valid (B, H, W) -> (B, M)."""
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    kl_map = temperature ** 2 * (teacher_pt * (teacher_log_pt - log_ps)).sum(2)   # (M, B, H, W)
    return image_mean(kl_map, valid).T


def check_masks(y: torch.Tensor, num_classes: int, where: str) -> None:
    """Masks (N, H, W) of ids in 0..C-1 or `IGNORE_INDEX`; else a one-line `ConfigError`."""
    if y.dim() != 3 or y.dtype.is_floating_point:
        raise ConfigError(f"{where}: segmentation needs integer masks (N, H, W), got {y.dtype} of shape "
                          f"{tuple(y.shape)}")
    bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= num_classes))
    if bool(bad.any()):
        raise ConfigError(f"{where}: mask value {int(y[bad][0])} is not a class id 0..{num_classes - 1} or "
                          f"{IGNORE_INDEX} (ignore)")
    if bool((~(y != IGNORE_INDEX).flatten(1).any(1)).any()):
        raise ConfigError(f"{where}: an image has no labelled pixel (its mask is all {IGNORE_INDEX}); drop it or "
                          f"label it")


@register_task("segmentation")
class Segmentation(Task):
    metric = "miou"
    dense = True

    def supervised_loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(full_precision(out.logits), y, ignore_index=IGNORE_INDEX)

    def correct(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        valid, target = _valid(y)
        return image_mean(_correct(out.logits.detach(), target), valid).sum()

    @torch.no_grad()
    def teacher_stats(self, t_outs: List[ModelOutput], y: torch.Tensor, temperature: float) -> TeacherStats:
        t = full_precision(torch.stack([o.logits for o in t_outs]))           # (M, B, C, H, W)
        valid, target = _valid(y)
        log_pt = F.log_softmax(t / temperature, dim=2)
        logp1 = F.log_softmax(t, dim=2)
        entropy = -(logp1.exp() * logp1).sum(2)                               # (M, B, H, W)
        picked = logp1.gather(2, target[None, :, None].expand(len(t_outs), -1, 1, -1, -1)).squeeze(2)
        ce, correct = -picked, (picked >= logp1.amax(2)).float()
        return TeacherStats(_image_logits(t, valid), log_pt, log_pt.exp(), image_mean(entropy, valid).T,
                            image_mean(ce, valid).T, image_mean(correct, valid).T)

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos=True):
        s = full_precision(s_out.logits)                                       # (B, C, H, W)
        valid, _ = _valid(y)
        kl = pixel_kd(teacher.pt, teacher.log_pt, s, valid, temperature)
        student_ce = image_mean(F.cross_entropy(s, y, ignore_index=IGNORE_INDEX, reduction="none"), valid)
        feat_mse, cos = None, torch.zeros_like(teacher.ce)
        if projected is not None:
            feat_mse, cos_all = feature_terms(projected, t_outs, with_cos)
            cos = cos if cos_all is None else cos_all
        student_correct = image_mean(_correct(s.detach(), _valid(y)[1]), valid)
        batch = Batch(x, y, index, teacher.logits, [o.embedding for o in t_outs], _image_logits(s, valid),
                      student_ce, kl, feat_mse, cos, teacher.ce, teacher.entropy, teacher.correct, student_correct,
                      student_embedding=s_out.embedding.detach())
        return keep_feature_maps(batch, s_out, t_outs, projected) if keep_maps else batch

    @torch.no_grad()
    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             forward: Optional[Forward] = None) -> torch.Tensor:
        forward = forward or model
        was_training = model.training
        model.eval()
        out = torch.zeros(2, device=x.device)
        for i in range(0, len(x), batch_size):
            yb = y[i:i + batch_size]
            s = forward(x[i:i + batch_size]).logits.float()
            valid, target = _valid(yb)
            out[0] += image_mean(_correct(s, target), valid).sum()
            out[1] += image_mean(F.cross_entropy(s, yb, ignore_index=IGNORE_INDEX, reduction="none"), valid).sum()
        model.train(was_training)
        return out

    def scores(self, model: nn.Module, eval_set, batch_size: int, forward: Optional[Forward] = None) -> dict:
        """mIoU, pixel accuracy (over all valid pixels of the split) and mean per-image CE."""
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        forward = forward or model
        was_training = model.training
        model.eval()
        iou = acc = None
        loss, n = 0.0, 0
        with torch.no_grad():
            for x, y in eval_set.batches(batch_size):
                s = forward(x).logits.float()
                if iou is None:
                    c = s.shape[1]
                    iou = MulticlassJaccardIndex(c, average="macro", ignore_index=IGNORE_INDEX).to(s.device)
                    acc = MulticlassAccuracy(c, average="micro", ignore_index=IGNORE_INDEX).to(s.device)
                pred = s.argmax(1)
                iou.update(pred, y)
                acc.update(pred, y)
                valid, _ = _valid(y)
                loss += float(image_mean(F.cross_entropy(s, y, ignore_index=IGNORE_INDEX, reduction="none"),
                                         valid).sum())
                n += len(y)
        model.train(was_training)
        return {"miou": float(iou.compute()), "pixel_accuracy": float(acc.compute()), "loss": loss / max(n, 1)}

    def evaluate(self, model, eval_set, batch_size, forward=None):
        s = self.scores(model, eval_set, batch_size, forward)
        return torch.tensor([s["miou"], s["loss"]], device=next(model.parameters()).device)

    def shift_labels(self, y: torch.Tensor, num_classes: int, flip: torch.Tensor) -> torch.Tensor:
        return torch.where(flip[:, None, None] & (y != IGNORE_INDEX), (y + 1) % num_classes, y)

    def check_targets(self, y: torch.Tensor, num_classes: int, where: str, image_shape: Optional[tuple] = None) -> None:
        check_masks(y, num_classes, where)
