"""CIFAR ResNets of the KD benchmark (RepDistiller/mdistiller `resnet.py` conventions).

Three stages of basic blocks on a 3x3 stem (no max-pool), depth = 6n + 2. The "x4" variants widen
every stage 4x (32, 64, 128, 256). Parameter counts at 100 classes: resnet8x4 1,233,540,
resnet32x4 7,433,860, resnet56 861,620, resnet110 1,736,564. At 32x32 input the feature map is
the last stage after its ReLU: (B, 64, 8, 8) for resnet20..110, (B, 256, 8, 8) for the x4 models.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..runtime.errors import ConfigError
from .registry import ModelOutput, register


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU. (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            # Projection shortcut (option B), as in RepDistiller; stride-1 stages keep identity.
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Stem conv3x3 (widths[0]) + 3 stages (widths[1:], strides 1, 2, 2) + GAP + linear."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            blocks = [BasicBlock(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        fmap = self.layer3(self.layer2(self.layer1(out)))  # (B, C_f, H/4, W/4), post-ReLU
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.fc(feature_map.mean(dim=(2, 3)))


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register_resnet(name: str, depth: int, widths: Sequence[int]) -> None:
    def builder(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels=input_shape[0], **kw)

    builder.__doc__ = f"CIFAR ResNet-{depth}, stage widths {tuple(widths[1:])}; feature map {widths[-1]}x(H/4)x(W/4)."
    register(name)(builder)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_resnet(f"resnet{_depth}", _depth, _NARROW)
_register_resnet("resnet8x4", 8, _X4)
_register_resnet("resnet32x4", 32, _X4)
