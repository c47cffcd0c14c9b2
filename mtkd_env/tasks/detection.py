"""`detection`: boxes from detectors, distilled on their dense outputs and features, scored by COCO mAP.

**Kinds of detector.** The task reads a model's outputs through the `DetectorKind` registered for
their type (`KINDS`, `register_kind`, `kind_of`): the per-image loss and score, the teachers'
statistics, the step's KD terms and the detections the metric reads. Two kinds exist:
`OneGrid` below (this docstring's definitions) and `mtkd_env.tasks.tv_detection.Torchvision`
(torchvision's FCOS, RetinaNet and Faster R-CNN with their own losses and postprocessing). A
pool mixing kinds is a one-line `ConfigError`.

**One-grid detectors.** Models return `mtkd_env.models.detection.DetectionOutput` (class logits
(B, L, C + 1) per location, index 0 = background; boxes (B, L, 4); the location centres (L, 2)).
Targets (every kind) are y (B, K, 5), one row `[label, x1, y1, x2, y2]` per object (pixels, x2/y2
exclusive) and rows of label -1 after the last one.

**Assignment** (FCOS's, one level): a location is positive for the smallest ground-truth box that
contains its centre; its class target is that box's label + 1, its box target that box; all other
locations are background (0).

**Per-image loss** (the supervised loss and the student's "CE" term of the step): the location
CE averaged over the image's locations plus the GIoU loss averaged over its positive locations
(0 without any).

**KD** per image i and teacher m: `T^2 * mean_l KL(softmax(z_m(l) / T) || softmax(s(l) / T))` over
the L locations (teachers and student share the layout: the same grid), and the feature KD of
every task (`mtkd_env.tasks.batch.feature_terms`).

**Statistics** (B, M): the teacher's per-image detection loss against the ground truth, its
location accuracy over the positive locations (over all locations for an image without objects),
its mean location entropy; `teacher_logits` (M, B, C) are the object classes' logits averaged over
the locations (the per-image vector of the sample state and the formula baselines).

**Metric** (every kind): COCO mAP@[.5:.95] by torchmetrics' `MeanAveragePrecision` (pycocotools backend)
over the kind's detections, never a hand-written one; here the decoded ones (scores of the object
classes, top 100 per image above 0.05, class-wise NMS at IoU 0.5).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from ..models.accuracy import Forward
from ..models.detection import DetectionOutput
from ..runtime.errors import ConfigError
from . import Task, register_task
from .batch import Batch, TeacherStats, feature_terms, full_precision, keep_feature_maps

__all__ = ["Detection", "DetectorKind", "KINDS", "register_kind", "kind_of", "OneGrid", "assign", "detection_loss",
           "decode", "check_boxes"]

_SCORE_MIN, _TOP_K, _NMS_IOU = 0.05, 100, 0.5


def assign(centers: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class targets (B, L) int64, box targets (B, L, 4), positive (B, L) bool) of locations with
    centres (L, 2) for targets y (B, K, 5)."""
    labels, boxes = y[..., 0], y[..., 1:]
    cx, cy = centers[None, :, None, 0], centers[None, :, None, 1]                       # (1, L, 1)
    inside = ((cx >= boxes[:, None, :, 0]) & (cx < boxes[:, None, :, 2]) & (cy >= boxes[:, None, :, 1])
              & (cy < boxes[:, None, :, 3]) & (labels[:, None, :] >= 0))              # (B, L, K)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[:, None, :].expand_as(inside)
    gt = torch.where(inside, area, torch.full_like(area, float("inf"))).argmin(-1)     # (B, L)
    positive = inside.any(-1)
    cls = torch.where(positive, labels.gather(1, gt).long() + 1, torch.zeros_like(gt))
    box = boxes.gather(1, gt[..., None].expand(-1, -1, 4))
    return cls, box, positive


def _giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import generalized_box_iou_loss

    return generalized_box_iou_loss(pred, target, reduction="none")


def detection_loss(logits: torch.Tensor, boxes: torch.Tensor, centers: torch.Tensor, y: torch.Tensor,
                   assigned: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Per-image loss (..., B): location CE mean + GIoU mean over positives, for logits (..., B, L, C+1)
    and boxes (..., B, L, 4) (a leading M dimension holds several models' outputs)."""
    cls, box, positive = assigned if assigned is not None else assign(centers, y)
    lead = logits.shape[:-3]
    flat = logits.reshape(-1, *logits.shape[-2:])                                       # (N*B, L, C+1)
    ce = F.cross_entropy(flat.transpose(1, 2), cls.repeat(flat.shape[0] // cls.shape[0], 1),
                         reduction="none").mean(-1)
    pred = full_precision(boxes).reshape(-1, 4)
    giou = _giou_loss(pred, box.expand(*lead, *box.shape).reshape(-1, 4).to(pred.dtype))
    pos = positive.expand(*lead, *positive.shape).reshape(-1, positive.shape[-1]).to(pred.dtype)
    giou = (giou.view_as(pos) * pos).sum(-1) / pos.sum(-1).clamp_min(1.0)
    return (ce + giou).view(*lead, -1)


def _location_accuracy(logits: torch.Tensor, cls: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(..., B): argmax == class target over the positive locations (all locations without any)."""
    right = (logits.argmax(-1) == cls).float()
    where = torch.where(positive.any(-1, keepdim=True), positive, torch.ones_like(positive)).float()
    return (right * where).sum(-1) / where.sum(-1)


@torch.no_grad()
def decode(logits: torch.Tensor, boxes: torch.Tensor) -> List[dict]:
    """Per image: {"boxes" (n, 4), "scores" (n,), "labels" (n,)} after top-k and class-wise NMS."""
    from torchvision.ops import batched_nms

    probs = torch.softmax(logits.float(), -1)[..., 1:]                                 # (B, L, C)
    out = []
    for p, bx in zip(probs, boxes.float()):
        scores, flat = p.flatten().topk(min(_TOP_K, p.numel()))
        keep = scores > _SCORE_MIN
        scores, flat = scores[keep], flat[keep]
        loc, labels = flat // p.shape[1], flat % p.shape[1]
        kept = batched_nms(bx[loc], scores, labels, _NMS_IOU)
        out.append({"boxes": bx[loc][kept], "scores": scores[kept], "labels": labels[kept]})
    return out


def _targets(y: torch.Tensor) -> List[dict]:
    return [{"boxes": t[t[:, 0] >= 0, 1:].float(), "labels": t[t[:, 0] >= 0, 0].long()} for t in y]


def check_boxes(y: torch.Tensor, num_classes: int, where: str, image_shape: Optional[tuple] = None) -> None:
    """Targets (N, K, 5) of integer labels 0..C-1 (or -1 rows: padding) and boxes x1 < x2, y1 < y2
    inside the image; else a one-line `ConfigError`."""
    if y.dim() != 3 or y.shape[-1] != 5 or not y.dtype.is_floating_point:
        raise ConfigError(f"{where}: detection needs float targets (N, K, 5) [label, x1, y1, x2, y2], got {y.dtype} "
                          f"of shape {tuple(y.shape)}")
    labels, boxes = y[..., 0], y[..., 1:]
    real = labels >= 0
    bad = real & ((labels != labels.round()) | (labels >= num_classes)) | (~real & (labels != -1))
    if bool(bad.any()):
        raise ConfigError(f"{where}: box label {float(labels[bad][0]):g} is not a class id 0..{num_classes - 1} "
                          f"(or -1 for a padding row)")
    empty = real & ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1]))
    if bool(empty.any()):
        raise ConfigError(f"{where}: box {boxes[empty][0].tolist()} is empty; expected x1 < x2 and y1 < y2 (pixels)")
    if image_shape is not None:
        h, w = image_shape[-2:]
        out = real & ((boxes[..., 0] < 0) | (boxes[..., 1] < 0) | (boxes[..., 2] > w) | (boxes[..., 3] > h))
        if bool(out.any()):
            raise ConfigError(f"{where}: box {boxes[out][0].tolist()} is out of the {w}x{h} image; expected "
                              f"0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h}")


class DetectorKind:
    """How the detection task reads one kind of detector output (registered by output type in `KINDS`).

    The `Detection` task's methods dispatch to the kind of their outputs, so a new kind of detector
    (another output type) extends the task by registering one class, not by another task:
    `OneGrid` (this module: `DetectionOutput`, the one-grid dense detectors) and
    `mtkd_env.tasks.tv_detection.Torchvision` (torchvision's detectors) are the two."""

    def supervised_loss(self, out, y: torch.Tensor) -> torch.Tensor:
        """The 0-d training loss (with grad)."""
        raise NotImplementedError

    def correct(self, out, y: torch.Tensor) -> torch.Tensor:
        """The 0-d sum of the per-image scores."""
        raise NotImplementedError

    def teacher_stats(self, t_outs: list, y: torch.Tensor, temperature: float) -> TeacherStats:
        raise NotImplementedError

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos) -> Batch:
        raise NotImplementedError

    def loss_and_score(self, out, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-image loss (B,), per-image score (B,)) of a model in eval mode (no grad)."""
        raise NotImplementedError

    def detections(self, out) -> List[dict]:
        """Per image {"boxes" (n, 4) input pixels, "scores" (n,), "labels" (n,) 0..C-1} (the metric's input)."""
        raise NotImplementedError


KINDS: Dict[type, DetectorKind] = {}
"""Output type -> its `DetectorKind` (one instance: kinds hold no state)."""


def register_kind(output_type: type) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        KINDS[output_type] = cls()
        return cls

    return deco


def kind_of(outs: list) -> DetectorKind:
    """The one `DetectorKind` of outputs `outs` (teachers' and student's); a pool that mixes kinds, or an
    output of no registered kind, is a one-line `ConfigError`."""
    types = sorted({type(o).__name__: type(o) for o in outs}.items())
    if len(types) != 1 or types[0][1] not in KINDS:
        raise ConfigError(f"detection: the models give {[n for n, _ in types]} outputs; teachers and student must "
                          f"all be one kind of detector ({sorted(t.__name__ for t in KINDS)}): the one-grid det_* "
                          f"models, or torchvision's det_fcos_* / det_retinanet_* / det_fasterrcnn_* ones")
    return KINDS[types[0][1]]


@register_kind(DetectionOutput)
class OneGrid(DetectorKind):
    """`mtkd_env.models.detection`'s dense one-grid detectors (the module docstring's definitions)."""

    def supervised_loss(self, out, y: torch.Tensor) -> torch.Tensor:
        return detection_loss(full_precision(out.logits), out.boxes, out.centers, y).mean()

    def correct(self, out, y: torch.Tensor) -> torch.Tensor:
        cls, _, positive = assign(out.centers, y)
        return _location_accuracy(out.logits.detach(), cls, positive).sum()

    @torch.no_grad()
    def teacher_stats(self, t_outs, y: torch.Tensor, temperature: float) -> TeacherStats:
        t = full_precision(torch.stack([o.logits for o in t_outs]))                      # (M, B, L, C+1)
        if any(o.centers.shape != t_outs[0].centers.shape for o in t_outs):
            raise ConfigError(f"detection KD: the teachers' location grids differ "
                              f"({[tuple(o.feature_map.shape[-2:]) for o in t_outs]}); every teacher and the "
                              f"student must share one grid")
        assigned = assign(t_outs[0].centers, y)
        loss = detection_loss(t, torch.stack([o.boxes for o in t_outs]), t_outs[0].centers, y, assigned)  # (M, B)
        log_pt = F.log_softmax(t / temperature, dim=-1)
        logp1 = F.log_softmax(t, dim=-1)
        entropy = -(logp1.exp() * logp1).sum(-1).mean(-1)                                  # (M, B)
        correct = _location_accuracy(t, assigned[0], assigned[2])
        return TeacherStats(t[..., 1:].mean(2), log_pt, log_pt.exp(), entropy.T, loss.T, correct.T)

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos=True):
        s = full_precision(s_out.logits)                                                   # (B, L, C+1)
        if s.shape[1] != teacher.pt.shape[2]:
            raise ConfigError(f"detection KD: the student predicts at {s.shape[1]} locations, the teachers at "
                              f"{teacher.pt.shape[2]}; they must share one grid (the same stride)")
        log_ps = F.log_softmax(s / temperature, dim=-1)
        kl = (temperature ** 2 * (teacher.pt * (teacher.log_pt - log_ps)).sum(-1).mean(-1)).T   # (B, M)
        assigned = assign(s_out.centers, y)
        student_ce = detection_loss(s, s_out.boxes, s_out.centers, y, assigned)
        feat_mse, cos = None, torch.zeros_like(teacher.ce)
        if projected is not None:
            feat_mse, cos_all = feature_terms(projected, t_outs, with_cos)
            cos = cos if cos_all is None else cos_all
        student_correct = _location_accuracy(s.detach(), assigned[0], assigned[2])
        batch = Batch(x, y, index, teacher.logits, [o.embedding for o in t_outs], s[..., 1:].mean(1), student_ce, kl,
                      feat_mse, cos, teacher.ce, teacher.entropy, teacher.correct, student_correct,
                      student_embedding=s_out.embedding.detach())
        return keep_feature_maps(batch, s_out, t_outs, projected) if keep_maps else batch

    def loss_and_score(self, out, y):
        cls, _, positive = assigned = assign(out.centers, y)
        logits = out.logits.float()
        return detection_loss(logits, out.boxes, out.centers, y, assigned), _location_accuracy(logits, cls, positive)

    def detections(self, out):
        return decode(out.logits, out.boxes)


@register_task("detection")
class Detection(Task):
    """Dispatches to the `DetectorKind` of the models' outputs (`kind_of`)."""

    metric = "map"
    dense = True

    def supervised_loss(self, out, y: torch.Tensor) -> torch.Tensor:
        return kind_of([out]).supervised_loss(out, y)

    def correct(self, out, y: torch.Tensor) -> torch.Tensor:
        return kind_of([out]).correct(out, y)

    def teacher_stats(self, t_outs, y: torch.Tensor, temperature: float) -> TeacherStats:
        return kind_of(t_outs).teacher_stats(t_outs, y, temperature)

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos=True):
        return kind_of([*t_outs, s_out]).measure(x, y, index, t_outs, teacher, s_out, projected, temperature,
                                                  keep_maps, with_cos)

    @torch.no_grad()
    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             forward: Optional[Forward] = None) -> torch.Tensor:
        forward = forward or model
        was_training = model.training
        model.eval()
        out = torch.zeros(2, device=x.device)
        for i in range(0, len(x), batch_size):
            o, yb = forward(x[i:i + batch_size]), y[i:i + batch_size]
            loss, score = kind_of([o]).loss_and_score(o, yb)
            out[0] += score.sum()
            out[1] += loss.sum()
        model.train(was_training)
        return out

    def scores(self, model: nn.Module, eval_set, batch_size: int, forward: Optional[Forward] = None) -> dict:
        """COCO mAP@[.5:.95] and mAP@.5 (torchmetrics, pycocotools backend) and the mean per-image loss."""
        from torchmetrics.detection import MeanAveragePrecision

        forward = forward or model
        was_training = model.training
        model.eval()
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        loss, n = 0.0, 0
        with torch.no_grad():
            for x, y in eval_set.batches(batch_size):
                o = forward(x)
                kind = kind_of([o])
                metric.update([{k: v.cpu() for k, v in d.items()} for d in kind.detections(o)],
                              [{k: v.cpu() for k, v in d.items()} for d in _targets(y)])
                loss += float(kind.loss_and_score(o, y)[0].sum())
                n += len(y)
        model.train(was_training)
        result = metric.compute()
        return {"map": max(0.0, float(result["map"])), "map_50": max(0.0, float(result["map_50"])),
                "loss": loss / max(n, 1)}

    def evaluate(self, model, eval_set, batch_size, forward=None):
        s = self.scores(model, eval_set, batch_size, forward)
        return torch.tensor([s["map"], s["loss"]], device=next(model.parameters()).device)

    def shift_labels(self, y: torch.Tensor, num_classes: int, flip: torch.Tensor) -> torch.Tensor:
        labels = y[..., 0]
        shifted = torch.where(flip[:, None] & (labels >= 0), (labels + 1) % num_classes, labels)
        return torch.cat([shifted[..., None], y[..., 1:]], dim=-1)

    def check_targets(self, y: torch.Tensor, num_classes: int, where: str, image_shape: Optional[tuple] = None) -> None:
        check_boxes(y, num_classes, where, image_shape)
