"""The model registry the zoo files register into: `ModelOutput`, the `KDModel` contract, `MODELS`,
`register` and RepDistiller's initialisation.

The zoo modules import this module, not the `mtkd_env.models` package, so the package can import
the zoo without a cycle.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["ModelOutput", "KDModel", "MODELS", "TEACHER_RECIPES", "register", "classifier_head", "msra_init_"]


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

TEACHER_RECIPES: Dict[str, Dict[str, Any]] = {}
"""Model name -> the keys of `mtkd_env.teachers.recipe` that this model's on-first-use training
overrides (e.g. a lower learning rate where the shared recipe's 0.05 does not train it)."""


def register(name: str, teacher_recipe: Optional[Dict[str, Any]] = None) -> Callable:
    """Decorator adding a builder `f(num_classes, input_shape, **kw) -> nn.Module` under `name`;
    `teacher_recipe`: its overrides of the embedded teachers' training recipe (`TEACHER_RECIPES`)."""

    def deco(fn: Callable) -> Callable:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = fn
        if teacher_recipe:
            TEACHER_RECIPES[name] = dict(teacher_recipe)
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
