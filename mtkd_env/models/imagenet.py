"""torchvision ImageNet models with the `ModelOutput` contract, features taken by forward hooks.

torchvision's own classes are used unchanged; a forward hook on the last feature stage captures
the feature map (`layer4` for the ResNet family, `features` for MobileNetV2 (ReLU6 output, 1280
channels), `conv5` for ShuffleNetV2), all post-activation: (B, C_f, H/32, W/32). State-dict keys
are torchvision's, so official checkpoint files load as they are.

Weights are never downloaded implicitly. `weights=` accepts a torchvision weights name
("IMAGENET1K_V1", "DEFAULT", "ResNet50_Weights.IMAGENET1K_V2", ...), looked up as a file in the
torch hub cache (`torch.hub.get_dir()/checkpoints`), or a path to a state-dict file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..runtime.errors import CheckpointError, ConfigError, UserError
from .registry import ModelOutput, register

__all__ = ["TORCHVISION_MODELS", "TorchvisionModel", "resolve_weights_file", "WeightsNotFoundError"]

TORCHVISION_MODELS = {
    # name: (torchvision builder, module whose output is the feature map, feature channels)
    "resnet18": ("resnet18", "layer4", 512),
    "resnet34": ("resnet34", "layer4", 512),
    "resnet50": ("resnet50", "layer4", 2048),
    "resnet101": ("resnet101", "layer4", 2048),
    "wide_resnet50_2": ("wide_resnet50_2", "layer4", 2048),
    "resnext50_32x4d": ("resnext50_32x4d", "layer4", 2048),
    "mobilenet_v2": ("mobilenet_v2", "features", 1280),
    "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", "conv5", 1024),
}


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Requested pretrained weights are not on disk (nothing is downloaded implicitly)."""


class TorchvisionModel(nn.Module):
    """Wraps a torchvision classifier: (B, 3, H, W) -> ModelOutput(logits (B, C),
    feature_map (B, C_f, h, w), embedding (B, C_f))."""

    def __init__(self, net: nn.Module, feature_module: str) -> None:
        super().__init__()
        self.net = net
        self.feature_module = feature_module
        self._captured: Optional[torch.Tensor] = None
        net.get_submodule(feature_module).register_forward_hook(self._capture)
        # Keep torchvision's key names in checkpoints: strip/add the "net." level.
        self.register_state_dict_post_hook(_strip_net_prefix)
        self.register_load_state_dict_pre_hook(_add_net_prefix)

    def _capture(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._captured = output

    def forward(self, x: torch.Tensor) -> ModelOutput:
        logits = self.net(x)
        fmap, self._captured = self._captured, None
        return ModelOutput(logits, fmap, fmap.mean(dim=(2, 3)))

    def classifier_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H_f, W_f) -> logits (B, C): what torchvision's forward does after the hooked
        module — global average pool, flatten, then `fc` (ResNet family, ShuffleNetV2) or
        `classifier` (MobileNetV2, dropout + linear)."""
        pooled = feature_map.mean(dim=(2, 3))
        return self.net.classifier(pooled) if self.feature_module == "features" else self.net.fc(pooled)


def _strip_net_prefix(module, state_dict, prefix, local_metadata) -> None:
    for key in list(state_dict):
        if key.startswith(prefix + "net."):
            state_dict[prefix + key[len(prefix) + 4:]] = state_dict.pop(key)


def _add_net_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                    error_msgs):
    for key in list(state_dict):
        if key.startswith(prefix) and not key.startswith(prefix + "net."):
            state_dict[prefix + "net." + key[len(prefix):]] = state_dict.pop(key)


def resolve_weights_file(arch: str, weights: str) -> Path:
    """The local file for `weights` of torchvision model `arch`: a path as given, or the torch hub
    cache file of a torchvision weights name. Raises `WeightsNotFoundError` naming where to put it."""
    from torchvision import models as tvm

    if os.sep in weights or weights.endswith((".pth", ".pt")):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {str(path)!r} for {arch!r} does not exist")
        return path
    builder = TORCHVISION_MODELS[arch][0]
    try:
        enum = tvm.get_model_weights(builder)
        entry = tvm.get_weight(weights) if "." in weights else enum[weights]
    except (KeyError, ValueError):
        names = [w.name for w in tvm.get_model_weights(builder)] + ["DEFAULT"]
        raise WeightsNotFoundError(f"unknown torchvision weights {weights!r} for {arch!r}; expected one of "
                                   f"{names} or a path to a state-dict file") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"torchvision weights {type(entry).__name__}.{entry.name} for {arch!r} are not in the torch hub "
            f"cache: expected {str(path)!r} (fetch {entry.url} there yourself; nothing is downloaded "
            f"implicitly), or pass a path to the file")
    return path


def _build(arch: str, num_classes: int, input_shape: tuple, weights: Optional[str] = None) -> nn.Module:
    from torchvision import models as tvm

    if input_shape[0] != 3:
        raise ConfigError(f"{arch}: torchvision ImageNet models expect 3-channel input, got input shape "
                         f"{tuple(input_shape)}")
    builder, feature_module, _ = TORCHVISION_MODELS[arch]
    net = getattr(tvm, builder)(weights=None, num_classes=num_classes)
    if weights is not None:
        path = resolve_weights_file(arch, weights)
        from ..runtime.files import load_weights

        state = load_weights(path, f"weights {str(path)!r}")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            raise CheckpointError(f"weights {str(path)!r} do not fit {arch} with {num_classes} classes: "
                             f"{(lines[1] if len(lines) > 1 else lines[0]).strip()}") from None
    return TorchvisionModel(net, feature_module)


def _register_tv(name: str, alias: Optional[str] = None) -> None:
    channels = TORCHVISION_MODELS[name][2]

    def builder(num_classes: int, input_shape: tuple, **kw) -> nn.Module:
        return _build(name, num_classes, input_shape, **kw)

    builder.__doc__ = (f"torchvision {name} (ImageNet layout); feature map {channels}x(H/32)x(W/32); "
                       f"`weights=` a torchvision weights name or file (never downloaded).")
    register(alias or name)(builder)


for _name in TORCHVISION_MODELS:
    _register_tv(_name)
_register_tv("shufflenet_v2_x1_0", alias="shufflenet_v2")
