"""Wide ResNets for CIFAR (Zagoruyko & Komodakis; RepDistiller/MTKD-RL `wrn.py` conventions).

`wrn_D_K`: depth D = 6n + 4, widen factor K, pre-activation blocks, stage widths 16K, 32K, 64K.
Parameter counts at 100 classes: wrn_16_2 703,284, wrn_40_2 2,255,156, wrn_28_4 5,872,180. The
feature map is the final BN + ReLU of the last stage: (B, 64K, 8, 8) at 32x32 input.
"""

from __future__ import annotations


import torch
from torch import nn
import torch.nn.functional as F

from ..runtime.errors import ConfigError
from .registry import ModelOutput, msra_init_, register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with identity or 1x1-conv shortcut (taken after the first
    BN-ReLU when the width changes, as in the reference WRN code)."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        # Key names (convShortcut, block1.layer.N) follow the reference code so that its
        # checkpoint files load unchanged.
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class NetworkBlock(nn.Module):
    """n pre-activation blocks; the first changes width and stride."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, drop_rate)
                                     for j in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv3x3 (16) + 3 stages of pre-activation blocks + BN-ReLU + GAP + linear."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WRN depth must be 6n + 4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = [NetworkBlock(n, widths[i], widths[i + 1], 1 if i == 0 else 2, drop_rate)
                                                 for i in range(3)]
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        msra_init_(self)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        fmap = F.relu(self.bn1(out))  # (B, 64K, H/4, W/4)
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.fc(feature_map.mean(dim=(2, 3)))


def _register_wrn(depth: int, widen: int) -> None:
    def builder(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels=input_shape[0], **kw)

    builder.__doc__ = f"WRN-{depth}-{widen}; feature map {64 * widen}x(H/4)x(W/4)."
    register(f"wrn_{depth}_{widen}")(builder)


for _depth, _widen in ((16, 1), (16, 2), (16, 4), (28, 2), (28, 4), (40, 1), (40, 2)):
    _register_wrn(_depth, _widen)
