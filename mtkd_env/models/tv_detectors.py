"""The registered torchvision detectors (`mtkd_env.models.tv_detection` runs them).

Always `weights=None, weights_backbone=None` (nothing is downloaded; BatchNorm, not frozen, in the
backbones, all layers trainable). The transform neither renormalises (the datasets are normalised)
nor resizes (`min_size`/`max_size` = the input size; the datasets fix the size).

Paper scale (P3–P7 of the FPN for the one-stage families, as torchvision's ResNet-50 builders):

- `det_fcos_resnet50_fpn`, `det_fcos_resnet101_fpn`, `det_fcos_mobilenet_v3_fpn`: FCOS; the
  MobileNetV3-Large one returns three levels + P6/P7 like the ResNet ones, so all share their
  anchors (one per location, P3–P7) and dense-output KD works between them at the same input size;
- `det_retinanet_resnet50_fpn`, `det_retinanet_mobilenet_v3_fpn`: RetinaNet (9 anchors per location,
  torchvision's default anchor generator), sharing their anchors likewise;
- `det_fasterrcnn_resnet50_fpn`, `det_fasterrcnn_resnet101_fpn`, `det_fasterrcnn_mobilenet_v3_fpn`:
  Faster R-CNN (the paper's detectors; torchvision's builders, ResNet-101 with `resnet_fpn_backbone`);
  KD on the FPN features only.

Small, for the embedded scene_boxes and the tests (a 4-stage conv body with torchvision's
`BackboneWithFPN`, levels at strides 4, 8, 16 and its max-pool level at 32):
`det_fcos_tiny` / `det_fcos_cnn`, `det_retinanet_tiny` / `det_retinanet_cnn`,
`det_fasterrcnn_tiny` / `det_fasterrcnn_cnn` (student / teacher widths).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Tuple

from torch import nn

from .registry import register
from .tv_detection import TorchvisionDetector

__all__ = ["small_fpn_body"]

_TINY, _CNN = ((16, 16, 32, 32), 64), ((32, 32, 64, 128), 128)
"""(body widths: stem and the three FPN stages, FPN channels) of the small student and teacher. FCOS's
and RetinaNet's heads normalise with GroupNorm(32, channels): 64 or more channels keep two values per
group on the 1x1 max-pool level of a 32-pixel image, which a lone image needs (one value is an error)."""


def _io(input_shape: tuple) -> dict:
    """The transform's settings for inputs (C, H, W): identity normalisation, no resizing."""
    c, h, w = input_shape
    return {"min_size": min(h, w), "max_size": max(h, w), "image_mean": [0.0] * c, "image_std": [1.0] * c}


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def small_fpn_body(in_channels: int, widths: Tuple[int, int, int, int], fpn_channels: int) -> nn.Module:
    """Stem (stride 2) and three stages (strides 4, 8, 16) of conv-BN-ReLU pairs, read by
    torchvision's `BackboneWithFPN` (levels "0", "1", "2" and its max-pool level "pool")."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    stem, *stages = widths
    layers = [("stem", _conv(in_channels, stem, 2))]
    cin = stem
    for i, w in enumerate(stages):
        layers.append((f"s{i}", nn.Sequential(_conv(cin, w, 2), _conv(w, w, 1))))
        cin = w
    return BackboneWithFPN(nn.Sequential(OrderedDict(layers)), {f"s{i}": str(i) for i in range(3)}, list(stages),
                           fpn_channels)


_SMALL_STRIDES = (4, 8, 16, 32)


def _anchors(sizes: tuple, ratios: tuple):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))


def _small_fcos(body: nn.Module, channels: int, num_classes: int, io: dict) -> nn.Module:
    """One anchor per location, its size the level's stride (FCOS's convention)."""
    from torchvision.models.detection import FCOS

    return TorchvisionDetector(FCOS(body, num_classes, anchor_generator=_anchors(_SMALL_STRIDES, (1.0,)), **io), "fcos")


def _small_retinanet(body: nn.Module, channels: int, num_classes: int, io: dict) -> nn.Module:
    """Three anchors per location (aspect ratios 1:2, 1:1, 2:1) of twice the level's stride."""
    from torchvision.models.detection import RetinaNet

    anchors = _anchors(tuple(2 * s for s in _SMALL_STRIDES), (0.5, 1.0, 2.0))
    return TorchvisionDetector(RetinaNet(body, num_classes, anchor_generator=anchors, **io), "retinanet")


def _small_faster_rcnn(body: nn.Module, channels: int, num_classes: int, io: dict) -> nn.Module:
    """RetinaNet's anchors for the RPN, RoI-align on the three body levels, a 128-wide box head, and
    fewer proposals and samples than torchvision's defaults (images of a few objects)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    anchors = _anchors(tuple(2 * s for s in _SMALL_STRIDES), (0.5, 1.0, 2.0))
    detector = FasterRCNN(body, None, rpn_anchor_generator=anchors,
                          box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
                          box_head=TwoMLPHead(channels * 7 * 7, 128),
                          box_predictor=FastRCNNPredictor(128, num_classes + 1), rpn_pre_nms_top_n_train=200,
                          rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50,
                          rpn_batch_size_per_image=64, box_batch_size_per_image=64, **io)
    return TorchvisionDetector(detector, "faster_rcnn")


TEACHER_RECIPE = {"lr": 0.01}
"""The on-first-use teacher training of these detectors: SGD at lr 0.01 instead of the shared 0.05,
which left two FCOS teachers on scene_boxes at 4.0 / 3.4 % validation mAP (at 0.01 with the teacher
CLI: 13.8 / 22.0 %; docs/dense.md, 2026-12-07)."""


_SMALL_DETECTORS = {"fcos": _small_fcos, "retinanet": _small_retinanet, "fasterrcnn": _small_faster_rcnn}
"""Name part -> (body, FPN channels, classes, transform settings) -> the small detector."""


def _register_small() -> None:
    for family, make in _SMALL_DETECTORS.items():
        for size, (widths, channels) in (("tiny", _TINY), ("cnn", _CNN)):
            def build(num_classes: int, input_shape: tuple, _make=make, _w=widths, _c=channels, **kw) -> nn.Module:
                return _make(small_fpn_body(input_shape[0], _w, _c), _c, num_classes, _io(input_shape))

            build.__doc__ = f"torchvision's {family} on the small FPN body ({size}: widths {widths}, FPN {channels})."
            register(f"det_{family}_{size}", teacher_recipe=TEACHER_RECIPE)(build)


_register_small()


def _mobilenet_p3_p7() -> nn.Module:
    """MobileNetV3-Large at strides 8, 16, 32 (the first blocks of its stride-8 and stride-16 stages and its
    last block; torchvision's extractor reads only those) with an FPN and P6/P7: the ResNet-50 builders' levels."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d)
    stages = 1 + sum(getattr(b, "_is_cn", False) for b in body.features) + 1
    return _mobilenet_extractor(body, True, stages, returned_layers=[stages - 4, stages - 3, stages - 1],
                                extra_blocks=LastLevelP6P7(256, 256))


@register("det_fcos_resnet50_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fcos_resnet50_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `fcos_resnet50_fpn` (weights=None, weights_backbone=None)."""
    from torchvision.models.detection import fcos_resnet50_fpn

    return TorchvisionDetector(fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                                 **_io(input_shape)), "fcos")


@register("det_fcos_resnet101_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fcos_resnet101_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `FCOS` on ResNet-101 C3–C5 + P6/P7 (`fcos_resnet50_fpn`'s levels and anchors)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionDetector(FCOS(backbone, num_classes, **_io(input_shape)), "fcos")


@register("det_fcos_mobilenet_v3_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fcos_mobilenet_v3_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `FCOS` on MobileNetV3-Large C3–C5 + P6/P7 (the anchors of `det_fcos_resnet50_fpn`)."""
    from torchvision.models.detection import FCOS

    return TorchvisionDetector(FCOS(_mobilenet_p3_p7(), num_classes, **_io(input_shape)), "fcos")


@register("det_retinanet_resnet50_fpn", teacher_recipe=TEACHER_RECIPE)
def det_retinanet_resnet50_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `retinanet_resnet50_fpn` (weights=None, weights_backbone=None)."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    return TorchvisionDetector(retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                                      **_io(input_shape)), "retinanet")


@register("det_retinanet_mobilenet_v3_fpn", teacher_recipe=TEACHER_RECIPE)
def det_retinanet_mobilenet_v3_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `RetinaNet` on MobileNetV3-Large C3–C5 + P6/P7 (the anchors of `det_retinanet_resnet50_fpn`)."""
    from torchvision.models.detection import RetinaNet

    return TorchvisionDetector(RetinaNet(_mobilenet_p3_p7(), num_classes, **_io(input_shape)), "retinanet")


@register("det_fasterrcnn_resnet50_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fasterrcnn_resnet50_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `fasterrcnn_resnet50_fpn` (weights=None, weights_backbone=None; C + 1 classes)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return TorchvisionDetector(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                       num_classes=num_classes + 1, **_io(input_shape)), "faster_rcnn")


@register("det_fasterrcnn_resnet101_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fasterrcnn_resnet101_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `FasterRCNN` on `resnet_fpn_backbone("resnet101", weights=None)` (all layers trainable)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, norm_layer=nn.BatchNorm2d,
                                   trainable_layers=5)
    return TorchvisionDetector(FasterRCNN(backbone, num_classes + 1, **_io(input_shape)), "faster_rcnn")


@register("det_fasterrcnn_mobilenet_v3_fpn", teacher_recipe=TEACHER_RECIPE)
def det_fasterrcnn_mobilenet_v3_fpn(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
    """torchvision's `fasterrcnn_mobilenet_v3_large_fpn` (weights=None, weights_backbone=None)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return TorchvisionDetector(fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                                                 num_classes=num_classes + 1, **_io(input_shape)),
                               "faster_rcnn")
