"""MobileNetV2 for CIFAR (RepDistiller's RCO version, as used by MTKD-RL and mdistiller).

Two widths, named explicitly because the literature uses "MobileNetV2" for both:

- `MobileNetV2`: width 1.0, MTKD-RL's student (2,353,060 parameters at 100 classes).
- `MobileNetV2_half` (alias `mobile_half`): width 0.5, RepDistiller/mdistiller/CA-MKD's
  "MobileNetV2" (64.60% vanilla on CIFAR-100).

Stride-2 stem and strides (1, 1, 2, 2, 1, 2, 1): at 32x32 input the feature map is the output of
the last inverted-residual stage, (B, 320 * width, 2, 2). As in RepDistiller/MTKD-RL it is the
linear bottleneck (BN, no ReLU) before the 1x1 conv to 1280 channels; the embedding is its GAP
(B, 320 * width), while the classifier reads the 1280-d pooled conv output.
"""

from __future__ import annotations


import torch
from torch import nn

from .registry import ModelOutput, msra_init_, register

# (expansion t, channels c, repeats n, first stride s); CIFAR keeps stage 2 at stride 1.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (kept even at t = 1, as in the reference) -> depthwise 3x3 -> 1x1 linear."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        blocks = []
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            units = []
            for i in range(n):
                units.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            blocks.append(nn.Sequential(*units))
        self.blocks = nn.ModuleList(blocks)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))  # Sequential: reference key names
        msra_init_(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out)
        fmap = out  # (B, 320 * width, H/16, W/16), linear bottleneck
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 320 * width, H_f, W_f) -> logits (B, C): 1x1 conv-BN-ReLU to 1280 channels, global
        average pool, linear classifier."""
        return self.classifier(self.conv2(feature_map).mean(dim=(2, 3)))


@register("MobileNetV2")
def mobilenetv2(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """MobileNetV2, width 1.0 (MTKD-RL's student); feature map 320x(H/16)x(W/16)."""
    return MobileNetV2(num_classes, in_channels=input_shape[0], **kw)


def _half(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """MobileNetV2, width 0.5 (RepDistiller's "MobileNetV2"); feature map 160x(H/16)x(W/16)."""
    return MobileNetV2(num_classes, in_channels=input_shape[0], width_mult=0.5, **kw)


register("MobileNetV2_half")(_half)
register("mobile_half")(_half)
