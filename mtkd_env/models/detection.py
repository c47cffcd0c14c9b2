"""Dense one-level detectors (FCOS-style, anchor-free): `DetectionOutput`, the small embedded ones and
torchvision FPN backbones under the same head.

Every detector predicts at each location of one feature grid (stride s: the input size over the
grid size) a class distribution over C + 1 classes (index 0 = background, k + 1 = object class k)
and a box, as distances (left, top, right, bottom) from the location's centre. Teachers and
student of one pool therefore share the location layout whenever their grids have the same size,
which is what the dense-output KD of `mtkd_env.tasks.detection` needs.

- `det_tiny` (the embedded scene_boxes' student), `det_cnn`, `det_resnet` (teachers): the
  segmentation bodies of `mtkd_env.models.segmentation` (stride 2) with the detection head;
- `det_resnet50_fpn`, `det_resnet101_fpn`, `det_mobilenet_v3_fpn`: torchvision's FPN backbones
  (`resnet_fpn_backbone`, and Faster R-CNN MobileNetV3's `_mobilenet_extractor(..., fpn=True)`),
  `weights=None` (nothing is downloaded), read at the FPN's finest level resampled to one grid of
  stride `FPN_STRIDE` (8), with the same head: teachers and students of any of them share the layout.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
import torch.nn.functional as F

from .registry import register
from .segmentation import SegNet

__all__ = ["DetectionOutput", "DenseDetector"]


class DetectionOutput(NamedTuple):
    logits: torch.Tensor       # (B, L, C + 1) class logits per location, index 0 = background
    feature_map: torch.Tensor  # (B, C_f, H_f, W_f) the grid the head reads (L = H_f * W_f)
    embedding: torch.Tensor    # (B, C_f) its global average pool
    boxes: torch.Tensor        # (B, L, 4) predicted boxes (x1, y1, x2, y2) in input pixels
    centers: torch.Tensor      # (L, 2) the locations' centres (x, y) in input pixels


class DenseDetector(nn.Module):
    """`body(x)` -> feature map (B, C_f, H_f, W_f) -> 3x3 conv towers -> class logits and boxes."""

    def __init__(self, body: nn.Module, channels: int, num_classes: int, stride: Optional[int] = None) -> None:
        super().__init__()
        self.body, self.stride = body, stride
        self.cls = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, num_classes + 1, 3, padding=1))
        self.reg = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> DetectionOutput:
        fmap = self.body(x)
        if self.stride is not None:  # a fixed grid (input / stride), so that detectors of any backbone share it
            fmap = F.interpolate(fmap, size=(x.shape[-2] // self.stride, x.shape[-1] // self.stride),
                                 mode="bilinear", align_corners=False)
        b, _, h, w = fmap.shape
        sy, sx = x.shape[-2] / h, x.shape[-1] / w
        ys = (torch.arange(h, device=x.device, dtype=fmap.dtype) + 0.5) * sy
        xs = (torch.arange(w, device=x.device, dtype=fmap.dtype) + 0.5) * sx
        centers = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)      # (L, 2)
        logits = self.cls(fmap).flatten(2).transpose(1, 2)                                     # (B, L, C + 1)
        # Distances in units of the stride, exp of a clamped output: positive, and no overflow early on.
        dist = torch.exp(self.reg(fmap).clamp(max=6.0)).flatten(2).transpose(1, 2) * max(sx, sy)
        boxes = torch.cat([centers - dist[..., :2], centers + dist[..., 2:]], dim=-1)
        return DetectionOutput(logits, fmap, fmap.mean(dim=(2, 3)), boxes, centers)


class _SegBody(nn.Module):
    """A `SegNet`'s feature stages (no classifier)."""

    def __init__(self, input_shape: tuple, widths: tuple, residual: bool = False) -> None:
        super().__init__()
        self.body = SegNet(1, input_shape, widths=widths, residual=residual).body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register("det_tiny")
def det_tiny(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """The embedded scene_boxes' student: conv 16 -> 32 (stride 2) -> 32 (dilation 2), then the head."""
    return DenseDetector(_SegBody(input_shape, (16, 32, 32)), 32, num_classes)


@register("det_cnn")
def det_cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Conv 32 -> 64 (stride 2) -> 64 -> 64 (dilated), then the head."""
    return DenseDetector(_SegBody(input_shape, (32, 64, 64, 64)), 64, num_classes)


@register("det_resnet")
def det_resnet(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Stem conv 32, residual blocks 32 (stride 2), 64, 64, then the head."""
    return DenseDetector(_SegBody(input_shape, (32, 32, 64, 64), residual=True), 64, num_classes)


class _FPNLevel(nn.Module):
    """A torchvision FPN backbone read at its finest level ("0")."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)["0"]


FPN_STRIDE = 8
"""The location grid of the FPN detectors (input / 8): the finest FPN level resampled to it, so that
ResNet (stride 4) and MobileNetV3 (stride 16) backbones share one layout."""


def _resnet_fpn(name: str, num_classes: int) -> nn.Module:
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=5)
    return DenseDetector(_FPNLevel(backbone), backbone.out_channels, num_classes, stride=FPN_STRIDE)


@register("det_resnet50_fpn")
def det_resnet50_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's ResNet-50 FPN backbone (weights=None, all layers trainable), P2 on the stride-8 grid."""
    return _resnet_fpn("resnet50", num_classes)


@register("det_resnet101_fpn")
def det_resnet101_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's ResNet-101 FPN backbone (weights=None, all layers trainable), P2 on the stride-8 grid."""
    return _resnet_fpn("resnet101", num_classes)


@register("det_mobilenet_v3_fpn")
def det_mobilenet_v3_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's MobileNetV3-Large FPN backbone (Faster R-CNN MobileNetV3's; weights=None), its
    finest level on the stride-8 grid."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None), fpn=True, trainable_layers=6)
    return DenseDetector(_FPNLevel(backbone), backbone.out_channels, num_classes, stride=FPN_STRIDE)
