"""ShuffleNet V1 and V2 for CIFAR (RepDistiller/MTKD-RL conventions: 1x1 stem, no max-pool).

Parameter counts at 100 classes: ShuffleV1 949,258, ShuffleV2 1,355,528. At 32x32 input the feature
maps are (B, 960, 4, 4) for ShuffleV1 (last stage after ReLU) and (B, 1024, 4, 4) for ShuffleV2
(the final 1x1 conv + BN + ReLU, as MTKD-RL takes it).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .registry import ModelOutput, register


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with channels interleaved across `groups`."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


# --- ShuffleNet V1 --------------------------------------------------------------------------
class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; stride 2 concatenates an
    avg-pooled shortcut, stride 1 adds the identity."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        # The first unit sees the 24-channel stem, too narrow to split into groups.
        self.g1 = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, out_planes: Sequence[int] = (240, 480, 960),
                 num_blocks: Sequence[int] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, cin = [], 24
        for cout, n in zip(out_planes, num_blocks):
            # The strided first unit concatenates its input, so its branch outputs cout - cin.
            units = [ShuffleV1Unit(cin, cout - cin, 2, groups)]
            units += [ShuffleV1Unit(cout, cout, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        fmap = self.layer3(self.layer2(self.layer1(out)))  # (B, 960, H/8, W/8)
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.linear(feature_map.mean(dim=(2, 3)))


# --- ShuffleNet V2 --------------------------------------------------------------------------
class ShuffleV2Unit(nn.Module):
    """Channel split: half passes through, half goes 1x1 -> depthwise 3x3 -> 1x1; concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the full input; outputs concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3,
                 out_channels: Sequence[int] = (116, 232, 464, 1024), num_blocks: Sequence[int] = (3, 7, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages, cin = [], 24
        for cout, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(ShuffleV2Down(cin, cout), *[ShuffleV2Unit(cout) for _ in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        fmap = F.relu(self.bn2(self.conv2(out)))  # (B, 1024, H/8, W/8)
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.linear(feature_map.mean(dim=(2, 3)))


@register("ShuffleV1")
def shufflev1(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """ShuffleNet V1 (g=3, stages 240/480/960); feature map 960x(H/8)x(W/8)."""
    return ShuffleNetV1(num_classes, in_channels=input_shape[0], **kw)


@register("ShuffleV2")
def shufflev2(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """ShuffleNet V2 1.0x (stages 116/232/464, conv 1024); feature map 1024x(H/8)x(W/8)."""
    return ShuffleNetV2(num_classes, in_channels=input_shape[0], **kw)
