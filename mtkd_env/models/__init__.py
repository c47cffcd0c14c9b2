"""Model registry: every model returns `ModelOutput(logits, feature_map, embedding)`.

`build(name, num_classes=..., input_shape=...)` constructs any registered architecture. The
feature-KD contract follows RepDistiller/MTKD-RL: `feature_map` is the last conv stage after its
ReLU (B, C_f, H_f, W_f) and `embedding` its global average pool (B, C_f).

Every model also implements `classifier_head(feature_map) -> logits`, the layers that follow
`feature_map` (see `KDModel`): CA-MKD passes the projected student feature through each teacher's
own head, and `forward` itself computes its logits with it, so the two never disagree.
"""

from __future__ import annotations

from torch import nn

from ..runtime.errors import unknown_name
from .registry import MODELS, TEACHER_RECIPES, KDModel, ModelOutput, classifier_head, msra_init_, register

__all__ = ["ModelOutput", "KDModel", "MODELS", "register", "build", "available", "teacher_recipe", "classifier_head",
           "msra_init_"]


def available() -> list:
    _load_zoo()
    return sorted(MODELS)


def teacher_recipe(name: str) -> dict:
    """Model `name`'s overrides of the embedded teachers' training recipe ({} for most models)."""
    _load_zoo()
    return dict(TEACHER_RECIPES.get(name, {}))


def build(name: str, num_classes: int, input_shape: tuple = (3, 32, 32), **kwargs) -> nn.Module:
    """Build architecture `name` for `num_classes` classes and inputs of shape (C, H, W)."""
    _load_zoo()
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def _load_zoo() -> None:
    # Importing the zoo modules runs their @register decorators.
    from . import (cifar_resnet, cifar_wrn, detection, imagenet, mobilenetv2, regnet, segmentation, shufflenet,  # noqa: F401
                   small, tv_detectors)
