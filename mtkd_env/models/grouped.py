"""K students of one architecture (and their projectors) run as one grouped network.

The K students' parameters and buffers are stacked tensors with a leading K, named as in
`module.named_parameters()` / `named_buffers()` (what `mtkd_env.engine.student_stack.StudentStack`
holds). A grouped forward reads the architecture (layer types, strides, BatchNorm momentum) from
one module and computes all K students at once:

- convolutions are one convolution with `groups = K * groups` over the channel-concatenated
  inputs (B, K*C, H, W) and the weights viewed as (K*C_out, C_in/groups, kh, kw); on an input
  shared by all students (evaluation, shared batches) the first one is an ordinary convolution
  with K*C_out outputs;
- BatchNorm is one BatchNorm over K*C channels: statistics per channel are per student, and the
  running statistics are views of the stacked buffers, so they update in place per student;
- linear layers are batched matrix products over (K, B, F);
- a projector (1x1 conv + BN + ReLU) folds its train-mode BatchNorm into the convolution: the
  batch mean and variance of `W u + b` are `W mean(u) + b` and `diag(W cov(u) W^T)`, computed
  from the student map's few channels, so the teacher-sized map is produced once by a batched
  matrix product and never normalised in a separate pass (on the CPU that pass dominated).

Only what the small students use is covered (`supports`); other architectures keep
`torch.func.vmap` or the row-by-row forward. Outputs have a leading K: logits (K, B, C), feature
map (K, B, C_f, H_f, W_f), embedding (K, B, C_f), projected maps M x (K, B, C_m, H_m, W_m).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .projectors import ProjectorBank
from .registry import ModelOutput
from .small import MLP, ConvNet

__all__ = ["supports", "students_forward", "projector_affine", "projectors_forward"]

Tensors = Dict[str, torch.Tensor]
# A tensor and its layout: "shared" (B, ...) the same for every student; "grouped" (B, K*C, H, W)
# channel-concatenated; "rows" (K, B, ...).
State = Tuple[torch.Tensor, str]


def _grouped(h: State, k: int) -> torch.Tensor:
    t, layout = h
    if layout == "grouped":
        return t
    if layout == "shared":
        return t.repeat(1, k, *[1] * (t.dim() - 2))
    return t.transpose(0, 1).flatten(1, 2)          # (K, B, C, H, W) -> (B, K*C, H, W)


def _rows(h: State, k: int) -> torch.Tensor:
    t, layout = h
    if layout == "rows":
        return t
    if layout == "shared":
        return t.expand(k, *t.shape)
    return t.unflatten(1, (k, -1)).transpose(0, 1)  # (B, K*C, ...) -> (K, B, C, ...)


def _conv(m: nn.Conv2d, p: Tensors, name: str, h: State, k: int) -> State:
    if m.padding_mode != "zeros":
        raise ValueError("grouped forward: only zero-padded convolutions")
    w = p[name + "weight"].flatten(0, 1)            # (K*C_out, C_in/groups, kh, kw)
    bias = p.get(name + "bias")
    bias = None if bias is None else bias.flatten()
    if h[1] == "shared" and m.groups == 1:          # one input for all: an ordinary convolution
        return F.conv2d(h[0], w, bias, m.stride, m.padding, m.dilation), "grouped"
    return F.conv2d(_grouped(h, k), w, bias, m.stride, m.padding, m.dilation, k * m.groups), "grouped"


def _batch_norm(m: nn.BatchNorm2d, p: Tensors, b: Tensors, name: str, h: State, k: int) -> State:
    mean = var = None  # the running statistics as `nn.BatchNorm2d.forward` passes them
    if not m.training or m.track_running_stats:
        mean, var = b[name + "running_mean"].view(-1), b[name + "running_var"].view(-1)  # views: in-place updates
    if m.training and m.track_running_stats:
        b[name + "num_batches_tracked"].add_(1)
    weight, bias = p.get(name + "weight"), p.get(name + "bias")
    out = F.batch_norm(_grouped(h, k), mean, var, None if weight is None else weight.flatten(),
                       None if bias is None else bias.flatten(), m.training or mean is None, m.momentum, m.eps)
    return out, "grouped"


def _linear(p: Tensors, name: str, h: State, k: int) -> State:
    w, bias = p[name + "weight"], p.get(name + "bias")   # (K, out, in), (K, out)
    x = h[0] if h[1] == "shared" else _rows(h, k)
    out = torch.matmul(x, w.transpose(1, 2))            # (B, in) or (K, B, in) -> (K, B, out)
    return (out if bias is None else out + bias[:, None]), "rows"


def _flatten(m: nn.Flatten, h: State, k: int) -> State:
    if m.start_dim != 1 or m.end_dim != -1:
        raise ValueError("grouped forward: only Flatten() of everything after the batch")
    t, layout = h
    return (t.flatten(1), "shared") if layout == "shared" else (_rows(h, k).flatten(2), "rows")


def _is_2x2(m: nn.MaxPool2d, t: torch.Tensor) -> bool:
    return (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation)) == ((2, 2), (2, 2), (0, 0), (1, 1)) \
        and t.shape[-2] % 2 == 0 and t.shape[-1] % 2 == 0


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class _MaxPool2AfterReLU(torch.autograd.Function):
    """2x2 max pooling, stride 2, of a ReLU's output (B, C, H, W) -> (B, C, H/2, W/2). The CPU's
    `max_pool2d` takes ~10 ns an element on the grouped networks' many channels (measured: 2.8 ms
    for (64, 64, 8, 8), against 0.12 ms here). The gradient goes to the maximum of each window;
    ties, which after a ReLU occur only at its zeros, all receive it, and the ReLU's backward
    zeroes it there, so the result equals `max_pool2d`'s."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                            torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, out = ctx.saved_tensors
        b, c, h, w = x.shape
        windows = x.view(b, c, h // 2, 2, w // 2, 2)
        hit = windows == out[:, :, :, None, :, None]
        return (hit * grad[:, :, :, None, :, None]).view(b, c, h, w)


def _sequential(seq: nn.Sequential, prefix: str, p: Tensors, b: Tensors, h: State, k: int) -> State:
    for i, m in enumerate(seq):
        name = f"{prefix}{i}."
        if isinstance(m, nn.Conv2d):
            h = _conv(m, p, name, h, k)
        elif isinstance(m, nn.BatchNorm2d):
            h = _batch_norm(m, p, b, name, h, k)
        elif isinstance(m, nn.Linear):
            h = _linear(p, name, h, k)
        elif isinstance(m, nn.ReLU):
            h = F.relu(h[0]), h[1]
        elif isinstance(m, nn.MaxPool2d):
            layout = "shared" if h[1] == "shared" else "grouped"
            t = h[0] if layout == "shared" else _grouped(h, k)
            after_relu = i > 0 and isinstance(seq[i - 1], nn.ReLU)
            h = (_MaxPool2AfterReLU.apply(t) if after_relu and _is_2x2(m, t) else
                 F.max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)), layout
        elif isinstance(m, nn.Flatten):
            h = _flatten(m, h, k)
        else:
            raise ValueError(f"grouped forward: no grouped form of {type(m).__name__}")
    return h


def _conv_net(model: ConvNet, p: Tensors, b: Tensors, h: State, k: int) -> ModelOutput:
    fmap = _sequential(model.body, "body.", p, b, h, k)
    fmap = (_grouped(fmap, k), "grouped")
    embedding = _rows((fmap[0].mean(dim=(2, 3)), "grouped"), k)          # (K, B, C_f)
    logits = _linear(p, "fc.", (embedding, "rows"), k)[0]
    return ModelOutput(logits, _rows(fmap, k), embedding)


def _mlp(model: MLP, p: Tensors, b: Tensors, h: State, k: int) -> ModelOutput:
    hidden = _rows(_sequential(model.body, "body.", p, b, h, k), k)      # (K, B, D)
    logits = _linear(p, "fc.", (hidden, "rows"), k)[0]
    return ModelOutput(logits, hidden[..., None, None], hidden)


_MODELS: Dict[type, Callable] = {ConvNet: _conv_net, MLP: _mlp}


def supports(student: nn.Module, projectors: Optional[nn.Module]) -> bool:
    """Whether this student (and projector bank) has a grouped forward."""
    if type(student) not in _MODELS or (projectors is not None and type(projectors) is not ProjectorBank):
        return False
    layers = [m for m in student.modules() if not isinstance(m, (nn.Sequential, type(student)))]
    known = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)
    return all(isinstance(m, known) and getattr(m, "padding_mode", "zeros") == "zeros" for m in layers)


def students_forward(student: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor,
                     shared: bool) -> ModelOutput:
    """All K students on `x`: (K, B, ...) one batch per student, or (B, ...) for all (`shared`).
    Train or eval mode as `student` is; train mode updates the stacked BatchNorm statistics in
    place. Returns (K, B, ...) outputs."""
    k = len(next(iter(params.values())))
    return _MODELS[type(student)](student, params, buffers, (x, "shared" if shared else "rows"), k)


def projector_affine(bank: ProjectorBank, params: Tensors, buffers: Tensors,
                     fmap: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every student's projectors up to their ReLU, in train mode (the only mode they run in), as
    affine maps of the resized student map: M x (u (K, B, C_s, HW_m), weight (K, C_m, C_s), shift
    (K, C_m)), where projector m's output is relu(weight @ u + shift) (K, B, C_m, HW_m): the 1x1
    convolution with its BatchNorm folded in. Updates the BatchNorm running statistics."""
    k, b = fmap.shape[:2]
    flat = fmap.flatten(3)                                                   # (K, B, C_s, H_s*W_s)
    out = []
    for i, proj in enumerate(bank):
        u = flat
        if fmap.shape[-2:] != (proj.h, proj.w):  # the resizing of `Projector.forward`, as one matrix product
            u = torch.matmul(flat, _resize_matrix(fmap.shape[-2:], (proj.h, proj.w), fmap.dtype, fmap.device))
        name = f"{i}."
        weight = params[name + "conv.weight"].flatten(2)                     # (K, C_m, C_s)
        bias = params[name + "conv.bias"]
        gamma, beta = params[name + "bn.weight"], params[name + "bn.bias"]
        n = b * u.shape[-1]
        mean_u = u.mean(dim=(1, 3))                                          # (K, C_s)
        centred = u - mean_u[:, None, :, None]
        cov = torch.einsum("kbcn,kbdn->kcd", centred, centred) / n          # (K, C_s, C_s)
        mean_z = torch.einsum("kmc,kc->km", weight, mean_u) + bias           # batch mean of the conv output
        var_z = (torch.matmul(weight, cov) * weight).sum(-1)                 # its biased batch variance
        bn = proj.bn
        scale = gamma * torch.rsqrt(var_z + bn.eps)                          # (K, C_m)
        # a*(W u + b - mean_z) + beta; b enters and cancels as in BatchNorm, so it gets its zero gradient
        shift = beta + scale * bias - scale * mean_z
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                m = bn.momentum
                buffers[name + "bn.running_mean"].mul_(1 - m).add_(mean_z.detach(), alpha=m)
                buffers[name + "bn.running_var"].mul_(1 - m).add_(var_z.detach() * (n / max(n - 1, 1)), alpha=m)
                buffers[name + "bn.num_batches_tracked"].add_(1)
        out.append((u, scale[..., None] * weight, shift))
    return out


def projectors_forward(bank: ProjectorBank, params: Tensors, buffers: Tensors,
                       fmap: torch.Tensor) -> List[torch.Tensor]:
    """Every student's map (K, B, C_s, H_s, W_s) through its projectors, in train mode (the only
    mode the projectors run in): M x (K, B, C_m, H_m, W_m)."""
    k, b = fmap.shape[:2]
    out = []
    for proj, (u, weight, shift) in zip(bank, projector_affine(bank, params, buffers, fmap)):
        y = torch.matmul(weight[:, None], u) + shift[:, None, :, None]      # (K, B, C_m, HW)
        y = F.relu(y) if proj.relu else y
        out.append(y.view(k, b, -1, proj.h, proj.w))
    return out


_RESIZE: Dict[tuple, torch.Tensor] = {}


def _resize_matrix(size: Tuple[int, int], to: Tuple[int, int], dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """`Projector.forward`'s resizing of an (H, W) map to (H_m, W_m) as the matrix (H*W, H_m*W_m)
    it is (adaptive average pooling or bilinear interpolation: linear in the map), obtained by
    resizing the H*W unit maps. The CPU's bilinear kernels took 1.6 ms forward and 3.2 ms backward
    on the grouped (512, 16, 4, 4) -> 8x8 map; one matrix product takes a fraction of that."""
    key = (tuple(size), tuple(to), dtype, device)
    if key not in _RESIZE:
        (h, w), (th, tw) = size, to
        unit = torch.eye(h * w, dtype=dtype, device=device).view(h * w, 1, h, w)
        resized = F.adaptive_avg_pool2d(unit, to) if h >= th and w >= tw else \
            F.interpolate(unit, size=to, mode="bilinear", align_corners=False)
        _RESIZE[key] = resized.view(h * w, th * tw)
    return _RESIZE[key]
