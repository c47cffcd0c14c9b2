"""Small models for the embedded digits benchmark and for tests; any input shape (C, H, W)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import ModelOutput, register
from .cifar_resnet import BasicBlock


class MLP(nn.Module):
    """Flatten -> hidden layers with ReLU -> linear. The last hidden vector is the (D, 1, 1) map."""

    def __init__(self, num_classes: int, input_shape: tuple, hidden: tuple = (128, 64)) -> None:
        super().__init__()
        layers, width = [], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.body(x)
        fmap = h[:, :, None, None]
        return ModelOutput(self.classifier_head(fmap), fmap, h)

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, D, 1, 1) -> logits (B, C): the last linear layer on the flattened hidden vector."""
        return self.fc(feature_map.flatten(1))


class ConvNet(nn.Module):
    """Conv-BN-ReLU stack; optional 2x2 max-pool after some stages; GAP -> linear."""

    def __init__(self, num_classes: int, input_shape: tuple, widths: tuple = (16, 32),
                 pool_after: tuple = ()) -> None:
        super().__init__()
        layers, c = [], input_shape[0]
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.body(x)
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.fc(feature_map.mean(dim=(2, 3)))


class TinyResNet(nn.Module):
    """Stem conv + two residual stages (the second strided); GAP -> linear."""

    def __init__(self, num_classes: int, input_shape: tuple, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.layer2(self.layer1(self.stem(x)))
        return ModelOutput(self.classifier_head(fmap), fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): global average pool, then the linear classifier."""
        return self.fc(feature_map.mean(dim=(2, 3)))


@register("mlp")
def mlp(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Two hidden layers (128, 64); feature map 64x1x1."""
    return MLP(num_classes, input_shape, **kw)


@register("cnn")
def cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Three conv stages (32, 64, 64); feature map 64xHxW."""
    return ConvNet(num_classes, input_shape, widths=(32, 64, 64), **kw)


@register("tiny_resnet")
def tiny_resnet(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Two residual stages (16, 32); feature map 32x(H/2)x(W/2)."""
    return TinyResNet(num_classes, input_shape, **kw)


@register("tiny_cnn")
def tiny_cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """The default student: conv 8 -> pool -> conv 16; feature map 16x(H/2)x(W/2)."""
    return ConvNet(num_classes, input_shape, widths=(8, 16), pool_after=(0,), **kw)


@register("small_cnn")
def small_cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """The glyphs scenarios' student: conv 16 -> pool -> conv 32 -> pool -> conv 32; feature map
    32x(H/4)x(W/4)."""
    return ConvNet(num_classes, input_shape, widths=(16, 32, 32), pool_after=(0, 1), **kw)


@register("pool_cnn")
def pool_cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Three conv stages (32, 64, 128) with 2x2 max-pools after the first two; feature map
    128x(H/4)x(W/4)."""
    return ConvNet(num_classes, input_shape, widths=(32, 64, 128), pool_after=(0, 1), **kw)
