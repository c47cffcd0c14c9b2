"""torchvision's detectors themselves (FCOS, RetinaNet, Faster R-CNN: their heads, anchors, losses and
postprocessing) under the engine's contract: `TVDetectionOutput`, `TorchvisionDetector`, `FAMILIES`.

`TorchvisionDetector(detector, family)` runs the detector's own pieces up to the point where the
ground truth is needed: `transform` (identity normalisation: the datasets are normalised already;
`min_size`/`max_size` set to the input size, so no resizing), `backbone` (an FPN), and for the
one-stage families the `head` and the `anchor_generator`. The rest, which needs the boxes, is the
family's (`FAMILIES[out.family]`), called by the detection task:

- `image_losses(out, y)`: torchvision's training loss of each image (B,): its `compute_loss` (FCOS,
  RetinaNet) or its RPN + RoI heads in training mode (Faster R-CNN), on a batch of one per image,
  so that an image's loss does not depend on the other images of its batch (FCOS normalises by the
  batch's foreground count, RetinaNet and Faster R-CNN per image); the sum of the losses dict;
- `detections(out)`: its own `postprocess_detections` (Faster R-CNN: RPN + RoI heads in eval mode),
  then `transform.postprocess`, boxes in input pixels, labels 0..C-1.

`logits` (B, L, C) are the one-stage heads' sigmoid class logits at every anchor of every FPN level
(in torchvision's order: level by level, location by location, anchor by anchor), the dense outputs
that teachers and student share when their anchors are the same; Faster R-CNN has none (its class
scores belong to RoI proposals, which differ between models): `logits` is None and KD is on the FPN
features only. `feature_map` is the finest FPN level (the features the projectors imitate).
Registered builders: `mtkd_env.models.tv_detectors`.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Dict, Iterator, List, NamedTuple, Optional

import torch
from torch import nn

__all__ = ["TVDetectionOutput", "TVParts", "TorchvisionDetector", "FAMILIES", "Family", "image_targets"]


class TVParts:
    """What the family needs after the forward: the detector, the transformed images (an `ImageList`),
    the FPN levels (name -> (B, C_fpn, H_l, W_l)), the head outputs and anchors (one-stage only)
    and the original image sizes."""

    __slots__ = ("detector", "images", "features", "head", "anchors", "original_sizes")

    def __init__(self, detector: nn.Module, images, features: Dict[str, torch.Tensor],
                 head: Optional[Dict[str, torch.Tensor]], anchors: Optional[List[torch.Tensor]],
                 original_sizes: List[tuple]) -> None:
        self.detector, self.images, self.features = detector, images, features
        self.head, self.anchors, self.original_sizes = head, anchors, original_sizes


class TVDetectionOutput(NamedTuple):
    logits: Optional[torch.Tensor]  # (B, L, C) sigmoid class logits per anchor (one-stage); None (Faster R-CNN)
    feature_map: torch.Tensor       # (B, C_fpn, H, W) the finest FPN level
    embedding: torch.Tensor         # (B, C_fpn) its global average pool
    family: str                     # a key of FAMILIES
    parts: TVParts


@contextlib.contextmanager
def _mode(modules: List[nn.Module], training: bool) -> Iterator[None]:
    """`modules` in train (or eval) mode for the block, then back to their modes."""
    before = [m.training for m in modules]
    for m in modules:
        m.train(training)
    try:
        yield
    finally:
        for m, t in zip(modules, before):
            m.train(t)


def image_targets(out: TVDetectionOutput, y: torch.Tensor, label_offset: int = 0) -> List[dict]:
    """Targets y (B, K, 5) as torchvision's dicts per image, boxes in the transformed images' pixels."""
    from torchvision.models.detection.transform import resize_boxes

    parts, targets = out.parts, []
    for t, size, new in zip(y, parts.original_sizes, parts.images.image_sizes):
        real = t[:, 0] >= 0
        boxes = resize_boxes(t[real, 1:].float(), list(size), list(new))
        targets.append({"boxes": boxes, "labels": t[real, 0].long() + label_offset})
    return targets


def _anchor_counts(parts: TVParts) -> List[int]:
    """Anchors per FPN level (its locations x the anchors per location), in the head's order."""
    counts = [f.shape[-2] * f.shape[-1] for f in parts.features.values()]
    per_location = parts.anchors[0].shape[0] // sum(counts)
    return [c * per_location for c in counts]


class Family:
    """How one torchvision detector family turns a forward into losses and detections."""

    label_offset: int = 0
    """torchvision's label of class 0 (1 where label 0 is the background: Faster R-CNN)."""

    def forward(self, detector: nn.Module, images, levels: List[torch.Tensor]):
        """(head outputs, anchors) of the one-stage families; (None, None) else."""
        return detector.head(levels), detector.anchor_generator(images, levels)

    def image_losses(self, out: TVDetectionOutput, y: torch.Tensor) -> torch.Tensor:
        """(B,) the detector's training loss (its losses dict summed) of each image, with grad."""
        det, parts = out.parts.detector, out.parts
        counts = _anchor_counts(parts)
        losses = []
        for i, target in enumerate(image_targets(out, y, self.label_offset)):
            head = {k: v[i:i + 1] for k, v in parts.head.items()}
            losses.append(sum(self.compute_loss(det, [target], head, [parts.anchors[i]], counts).values()))
        return torch.stack(losses)

    def compute_loss(self, det: nn.Module, targets: List[dict], head: Dict[str, torch.Tensor],
                     anchors: List[torch.Tensor], counts: List[int]) -> Dict[str, torch.Tensor]:
        """The detector's own `compute_loss` (FCOS's reads the anchors per level; RetinaNet's does not)."""
        return det.compute_loss(targets, head, anchors, counts)

    @torch.no_grad()
    def raw_detections(self, out: TVDetectionOutput) -> List[dict]:
        det, parts = out.parts.detector, out.parts
        counts = _anchor_counts(parts)
        head = {k: list(v.split(counts, dim=1)) for k, v in parts.head.items()}
        anchors = [list(a.split(counts)) for a in parts.anchors]
        return det.postprocess_detections(head, anchors, parts.images.image_sizes)

    @torch.no_grad()
    def detections(self, out: TVDetectionOutput) -> List[dict]:
        """Per image {"boxes" (n, 4) input pixels, "scores" (n,), "labels" (n,) 0..C-1}."""
        parts = out.parts
        dets = parts.detector.transform.postprocess(self.raw_detections(out), parts.images.image_sizes,
                                                    parts.original_sizes)
        return [{**d, "labels": d["labels"] - self.label_offset} for d in dets]


class RetinaNetFamily(Family):
    def compute_loss(self, det, targets, head, anchors, counts):
        return det.compute_loss(targets, head, anchors)


class TwoStage(Family):
    """Faster R-CNN: RPN proposals, then RoI heads; no dense class outputs."""

    label_offset = 1

    def forward(self, detector, images, levels):
        return None, None

    def image_losses(self, out, y):
        from torchvision.models.detection.image_list import ImageList

        det, parts = out.parts.detector, out.parts
        losses = []
        device = parts.images.tensors.device
        # Training mode for the RPN and the RoI heads only (they hold no normalisation statistics):
        # their losses exist only there. They sample anchors and proposals there from the global RNG;
        # seeding it from the image's boxes (inside a fork, so the caller's RNG is left alone) makes
        # an image's loss a function of the model and the image, whatever ran before.
        with _mode([det.rpn, det.roi_heads], True), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else []):
            for i, target in enumerate(image_targets(out, y, self.label_offset)):
                torch.manual_seed(zlib.crc32(y[i].detach().cpu().numpy().tobytes()))
                images = ImageList(parts.images.tensors[i:i + 1], parts.images.image_sizes[i:i + 1])
                features = {k: v[i:i + 1] for k, v in parts.features.items()}
                proposals, rpn_losses = det.rpn(images, features, [target])
                _, roi_losses = det.roi_heads(features, proposals, images.image_sizes, [target])
                losses.append(sum(rpn_losses.values()) + sum(roi_losses.values()))
        return torch.stack(losses)

    @torch.no_grad()
    def raw_detections(self, out):
        det, parts = out.parts.detector, out.parts
        with _mode([det.rpn, det.roi_heads], False):
            proposals, _ = det.rpn(parts.images, parts.features)
            dets, _ = det.roi_heads(parts.features, proposals, parts.images.image_sizes)
        return dets


FAMILIES: Dict[str, Family] = {"fcos": Family(), "retinanet": RetinaNetFamily(), "faster_rcnn": TwoStage()}
"""Family name -> how its outputs become losses and detections."""


class TorchvisionDetector(nn.Module):
    """A torchvision detector (`FCOS`, `RetinaNet`, `FasterRCNN`) read up to its ground-truth-free part:
    (B, C_in, H, W) -> `TVDetectionOutput`, the same in train and eval mode."""

    def __init__(self, detector: nn.Module, family: str) -> None:
        super().__init__()
        self.detector, self.family = detector, family

    def forward(self, x: torch.Tensor) -> TVDetectionOutput:
        det = self.detector
        images, _ = det.transform(list(x))
        features = det.backbone(images.tensors)
        levels = list(features.values())
        head, anchors = FAMILIES[self.family].forward(det, images, levels)
        fmap = levels[0]
        parts = TVParts(det, images, features, head, anchors, [tuple(x.shape[-2:])] * len(x))
        return TVDetectionOutput(None if head is None else head["cls_logits"], fmap, fmap.mean(dim=(2, 3)),
                                 self.family, parts)
