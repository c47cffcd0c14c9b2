"""Segmentation models: `ModelOutput(logits (B, C, H, W) at the input resolution, feature_map, embedding)`.

- Small ones for the embedded scenes (`seg_tiny`, the student; `seg_cnn`, `seg_resnet`, teachers):
  conv stages, one stride-2 stage, a 1x1 classifier, bilinear upsampling to the input size.
- torchvision's segmentation networks (`deeplabv3_resnet50`, `deeplabv3_resnet101`,
  `deeplabv3_mobilenet_v3_large`, `fcn_resnet50`, `lraspp_mobilenet_v3_large`), always built with
  `weights=None, weights_backbone=None` (nothing is downloaded; train them with
  `python -m mtkd_env.teachers train` or load a checkpoint). The feature map is the backbone's
  last stage (`out`; `high` for LR-ASPP); state-dict keys are torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .cifar_resnet import BasicBlock
from .registry import ModelOutput, register

__all__ = ["SegNet", "TorchvisionSegmentation", "TORCHVISION_SEGMENTATION"]


class SegNet(nn.Module):
    """Conv-BN-ReLU stages (the second one strided, later ones dilated) -> feature map
    (B, C_f, H/2, W/2) -> 1x1 classifier -> bilinear upsampling to (H, W)."""

    def __init__(self, num_classes: int, input_shape: tuple, widths: tuple = (16, 32), residual: bool = False) -> None:
        super().__init__()
        c, layers = input_shape[0], []
        for i, w in enumerate(widths):
            if residual and i > 0:
                layers.append(BasicBlock(c, w, 2 if i == 1 else 1))
            else:
                dilation = 1 if i < 2 else 2
                layers += [nn.Conv2d(c, w, 3, stride=2 if i == 1 else 1, padding=dilation, dilation=dilation,
                                     bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.body(x)
        logits = F.interpolate(self.classifier(fmap), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits, fmap, fmap.mean(dim=(2, 3)))


@register("seg_tiny")
def seg_tiny(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """The embedded scenes' student: conv 16 -> 32 (stride 2) -> 32 (dilation 2); feature map 32x(H/2)x(W/2)."""
    return SegNet(num_classes, input_shape, widths=(16, 32, 32), **kw)


@register("seg_cnn")
def seg_cnn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Conv 32 -> 64 (stride 2) -> 64 (dilation 2) -> 64 (dilation 2); feature map 64x(H/2)x(W/2)."""
    return SegNet(num_classes, input_shape, widths=(32, 64, 64, 64), **kw)


@register("seg_resnet")
def seg_resnet(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """Stem conv 32, then residual blocks 32 (stride 2), 64, 64; feature map 64x(H/2)x(W/2)."""
    return SegNet(num_classes, input_shape, widths=(32, 32, 64, 64), residual=True, **kw)


TORCHVISION_SEGMENTATION = {
    # name: (torchvision.models.segmentation builder, backbone output read as the feature map)
    "deeplabv3_resnet50": ("deeplabv3_resnet50", "out"),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", "out"),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", "out"),
    "fcn_resnet50": ("fcn_resnet50", "out"),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large", "high"),
}


class TorchvisionSegmentation(nn.Module):
    """A torchvision segmentation network (no auxiliary head) under the `ModelOutput` contract."""

    def __init__(self, net: nn.Module, feature_key: str) -> None:
        super().__init__()
        self.backbone, self.classifier, self.feature_key = net.backbone, net.classifier, feature_key

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.backbone(x)
        # LR-ASPP's head reads the whole dict (low and high levels), DeepLab's and FCN's the last stage.
        head_in = features if self.feature_key == "high" else features["out"]
        logits = F.interpolate(self.classifier(head_in), size=x.shape[-2:], mode="bilinear", align_corners=False)
        fmap = features[self.feature_key]
        return ModelOutput(logits, fmap, fmap.mean(dim=(2, 3)))


class _MobileNetV2DeepLab(nn.Module):
    """DeepLabV3 on torchvision's MobileNetV2 features (the paper's segmentation student; torchvision
    has no such builder): the backbone's last stage (1280 channels, stride 32) is `out`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        self.backbone = IntermediateLayerGetter(mobilenet_v2(weights=None).features, {"18": "out"})
        self.classifier = DeepLabHead(1280, num_classes)


@register("deeplabv3_mobilenet_v2")
def deeplabv3_mobilenet_v2(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """DeepLabV3 head on torchvision's MobileNetV2 (weights=None); feature map 1280x(H/32)x(W/32)."""
    return TorchvisionSegmentation(_MobileNetV2DeepLab(num_classes), "out")


def _torchvision_builder(name: str, builder: str, key: str):
    def build(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
        from torchvision.models import segmentation as tvseg

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes, **kw}
        if name != "lraspp_mobilenet_v3_large":
            kwargs.setdefault("aux_loss", False)
        return TorchvisionSegmentation(getattr(tvseg, builder)(**kwargs), key)

    build.__doc__ = f"torchvision's `{builder}` (weights=None, weights_backbone=None)."
    return build


for _name, (_builder, _key) in TORCHVISION_SEGMENTATION.items():
    register(_name)(_torchvision_builder(_name, _builder, _key))
