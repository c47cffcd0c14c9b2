"""Per-teacher projectors of the student's feature map (MTKD-RL's TransFeat, without its bug).

Each branch resizes the *original* student map to its teacher's spatial size (adaptive average
pooling when shrinking, bilinear upsampling when growing), then applies 1x1 conv + BN + ReLU.
The official code fed each branch the map already resized by the previous branch.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["Projector", "ProjectorBank"]


class Projector(nn.Module):
    """(B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)."""

    def __init__(self, student_channels: int, teacher_shape: Sequence[int], relu: bool = True) -> None:
        super().__init__()
        c_t, self.h, self.w = teacher_shape
        self.conv = nn.Conv2d(student_channels, c_t, kernel_size=1, bias=True)
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = relu

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        h, w = fmap.shape[-2:]
        if (h, w) != (self.h, self.w):
            if h >= self.h and w >= self.w:
                fmap = F.adaptive_avg_pool2d(fmap, (self.h, self.w))
            else:
                fmap = F.interpolate(fmap, size=(self.h, self.w), mode="bilinear", align_corners=False)
        out = self.bn(self.conv(fmap))
        return F.relu(out) if self.relu else out


class ProjectorBank(nn.ModuleList):
    """One `Projector` per teacher, each fed the same original student map."""

    def __init__(self, student_channels: int, teacher_shapes: Sequence[Sequence[int]], relu: bool = True):
        super().__init__([Projector(student_channels, s, relu) for s in teacher_shapes])

    def forward(self, fmap: torch.Tensor) -> List[torch.Tensor]:
        return [p(fmap) for p in self]
