"""RegNets for CIFAR (the pytorch-cifar version that MTKD-RL uses: 3x3 stem of 64, stage strides
1, 1, 2, 2, so the last stage runs at 8x8 for 32x32 input).

Parameter counts at 100 classes: RegNetX_200MF 2,355,156, RegNetX_400MF 4,813,988,
RegNetY_400MF 5,749,012. Feature maps (last stage after ReLU) at 32x32 input: (B, 368, 8, 8) for
RegNetX_200MF, (B, 384, 8, 8) for the 400MF models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .registry import ModelOutput, register


@dataclass(frozen=True)
class RegNetSpec:
    depths: Tuple[int, ...]
    widths: Tuple[int, ...]
    group_width: int
    se_ratio: float = 0.0
    bottleneck_ratio: float = 1.0
    strides: Tuple[int, ...] = (1, 1, 2, 2)
    stem_width: int = 64


SPECS = {
    "RegNetX_200MF": RegNetSpec((1, 1, 4, 7), (24, 56, 152, 368), group_width=8),
    "RegNetX_400MF": RegNetSpec((1, 2, 7, 12), (32, 64, 160, 384), group_width=16),
    "RegNetY_400MF": RegNetSpec((1, 2, 7, 12), (32, 64, 160, 384), group_width=16, se_ratio=0.25),
}


class SqueezeExcite(nn.Module):
    """(B, C, H, W) -> same shape, channels rescaled by sigmoid(W2 relu(W1 GAP(x)))."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.se2 = nn.Conv2d(squeezed, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.se2(F.relu(self.se1(s))).sigmoid()


class XBlock(nn.Module):
    """1x1 -> grouped 3x3 (stride) -> [SE] -> 1x1, plus shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, spec: RegNetSpec) -> None:
        super().__init__()
        mid = int(round(cout * spec.bottleneck_ratio))
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid // spec.group_width, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # SE width follows the block *input* width, as in the reference implementation.
        self.se = SqueezeExcite(mid, int(round(cin * spec.se_ratio))) if spec.se_ratio > 0 else None
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class RegNet(nn.Module):
    def __init__(self, spec: RegNetSpec, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, spec.stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        stages, cin = [], spec.stem_width
        for depth, width, stride in zip(spec.depths, spec.widths, spec.strides):
            stages.append(nn.Sequential(*[XBlock(cin if i == 0 else width, width, stride if i == 0 else 1, spec)
                                          for i in range(depth)]))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, C_f, H/4, W/4)
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.linear(feature_map.mean(dim=(2, 3)))


def _register_regnet(name: str) -> None:
    spec = SPECS[name]

    def builder(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
        return RegNet(spec, num_classes, in_channels=input_shape[0], **kw)

    builder.__doc__ = f"{name} (CIFAR); feature map {spec.widths[-1]}x(H/4)x(W/4)."
    register(name)(builder)


for _name in SPECS:
    _register_regnet(_name)
