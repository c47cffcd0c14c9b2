"""Model registry: every model returns `ModelOutput(logits, feature_map, embedding)`.

`build(name, num_classes=..., input_shape=...)` constructs any registered architecture. The
feature-KD contract follows RepDistiller/MTKD-RL: `feature_map` is the last conv stage after its
ReLU (B, C_f, H_f, W_f) and `embedding` its global average pool (B, C_f).

Every model also implements `classifier_head(feature_map) -> logits`, the layers that follow
`feature_map` (see `KDModel`): CA-MKD passes the projected student feature through each teacher's
own head, and `forward` itself computes its logits with it, so the two never disagree.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ..runtime.errors import unknown_name

__all__ = ["ModelOutput", "KDModel", "MODELS", "register", "build", "available", "classifier_head"]


class ModelOutput(NamedTuple):
    logits: torch.Tensor       # (B, C)
    feature_map: torch.Tensor  # (B, C_f, H_f, W_f)
    embedding: torch.Tensor    # (B, C_f)


@runtime_checkable
class KDModel(Protocol):
    """What every registered model provides."""

    def __call__(self, x: torch.Tensor) -> ModelOutput:
        """(B, C_in, H, W) inputs -> `ModelOutput`."""
        ...

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, num_classes): the layers after `feature_map` (global
        pooling and the classifier; MobileNetV2 also applies its 1x1 conv to 1280 channels first),
        so that `classifier_head(forward(x).feature_map) == forward(x).logits`. Any map of the
        model's feature shape (C_f, H_f, W_f) is accepted, e.g. a student map projected to it."""
        ...


def classifier_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model.classifier_head`, or a one-line `TypeError` for a model that does not implement
    the `KDModel` contract (e.g. a user module registered without it)."""
    head = getattr(model, "classifier_head", None)
    if not callable(head):
        raise TypeError(f"{type(model).__name__} has no classifier_head(feature_map) -> logits method; every "
                        f"model used as a teacher for CA-MKD feature weights must implement "
                        f"mtkd_env.models.KDModel")
    return head


MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Decorator adding a builder `f(num_classes, input_shape, **kw) -> nn.Module` under `name`."""

    def deco(fn: Callable) -> Callable:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return deco


def msra_init_(module: nn.Module, linear_std: Optional[float] = None) -> None:
    """RepDistiller's initialisation, in module order: conv weights N(0, sqrt(2 / (k*k*C_out))),
    BN weight 1 and bias 0, linear bias 0 and (with `linear_std`) linear weight N(0, linear_std)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def available() -> list:
    _load_zoo()
    return sorted(MODELS)


def build(name: str, num_classes: int, input_shape: tuple = (3, 32, 32), **kwargs) -> nn.Module:
    """Build architecture `name` for `num_classes` classes and inputs of shape (C, H, W)."""
    _load_zoo()
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def _load_zoo() -> None:
    # Importing the zoo modules runs their @register decorators.
    from . import cifar_resnet, cifar_wrn, imagenet, mobilenetv2, regnet, shufflenet, small  # noqa: F401
