"""The feature terms of K grouped students in one autograd node: `fused_feature_terms`.

`engine.batch.feature_terms` takes the projected maps; on the CPU the passes over them (add the
shift, ReLU, subtract the teacher map, square, mean, the cosine's pooling, and the backward of
each) dominated the grouped step for a teacher map as large as the `cnn` teacher's 64x8x8. Here a
projector is given as its affine map (`models.grouped.projector_affine`: projected = relu(weight @ u
+ shift)) and one `torch.autograd.Function` computes the per-sample MSE (with grad) and the cosine
(no grad) with a hand-written backward: the shift rides in the matrix product as a row of ones, the
ReLU's mask is applied once to the residual kept for the backward, and the backward is two matrix
products (the MSE's gradient scale is applied to their small operands, never to the map).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..models import ModelOutput

__all__ = ["FeatureTerm", "fused_feature_terms"]


class FeatureTerm(torch.autograd.Function):
    """mse (K, B) = mean over (C_m, N) of (act(weight @ u + shift) - target)^2 per sample, and cos
    (K, B) = cosine(mean over N of act(...), embedding) without grad; act is ReLU or the identity.

    u (K, B, C_s, N), weight (K, C_m, C_s), shift (K, C_m), target (K, B, C_m, N) or (B, C_m, N)
    (no grad), embedding (K, B, C_m) or (B, C_m) (no grad). Gradients reach u, weight, shift."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor, target: torch.Tensor,
                embedding: torch.Tensor, relu: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        k, b, c_s, n = u.shape
        c_m = weight.shape[1]
        # channel-major (K, C, B*N): one large matrix product per student instead of B small ones
        ua = torch.cat([u, u.new_ones(k, b, 1, n)], dim=2).transpose(1, 2).reshape(k, c_s + 1, b * n)
        wa = torch.cat([weight, shift[..., None]], dim=-1)                  # (K, C_m, C_s + 1)
        y = torch.bmm(wa, ua)                                               # (K, C_m, B*N)
        if relu:
            y.clamp_(min=0)  # measured several times faster than relu_ on the CPU
        y4 = y.view(k, c_m, b, n)
        residual = torch.sub(y4.transpose(1, 2), target, out=y.new_empty(k, b, c_m, n))   # sample-major
        flat = residual.view(k, b, c_m * n)
        mse = torch.linalg.vecdot(flat, flat) / flat.shape[-1]                            # (K, B)
        cos = F.cosine_similarity(y4.mean(-1).transpose(1, 2), embedding, dim=-1)
        # d mse / d (pre-activation), up to the factor 2 / (C_m N): the residual where the ReLU
        # passed, written channel-major for the backward's products
        masked = y.new_empty(k, c_m, b, n)
        if relu:
            torch.ops.aten.threshold_backward.grad_input(residual.transpose(1, 2), y4, 0, grad_input=masked)
        else:
            masked.copy_(residual.transpose(1, 2))
        ctx.save_for_backward(ua, wa, masked)
        ctx.mark_non_differentiable(cos)
        return mse, cos

    @staticmethod
    def backward(ctx, grad_mse: torch.Tensor, _grad_cos: torch.Tensor):
        ua, wa, masked = ctx.saved_tensors
        k, c_m, b, n = masked.shape
        scale = (grad_mse * (2.0 / (c_m * n)))[:, None, :, None]           # (K, 1, B, 1)
        flat = masked.view(k, c_m, b * n)
        grad_u = grad_w = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_u = (torch.bmm(wa[..., :-1].transpose(1, 2), flat).view(k, -1, b, n) * scale).transpose(1, 2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            scaled = (ua.view(k, -1, b, n) * scale).view(k, -1, b * n)
            grad_wa = torch.bmm(flat, scaled.transpose(1, 2))               # (K, C_m, C_s + 1)
            grad_w, grad_shift = grad_wa[..., :-1], grad_wa[..., -1]
        return grad_u, grad_w, grad_shift, None, None, None


def fused_feature_terms(affine: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], relu: Sequence[bool],
                        t_outs: List[ModelOutput]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`engine.batch.feature_terms` of the projectors given as affine maps (M x (u, weight,
    shift), `models.grouped.projector_affine`) with their ReLU flags: feature MSE (K, B, M) with
    grad and cosine (K, B, M) detached."""
    mse, cos = zip(*(FeatureTerm.apply(u, w, s, o.feature_map.flatten(-2), o.embedding, r)
                     for (u, w, s), r, o in zip(affine, relu, t_outs)))
    return torch.stack(mse, dim=-1), torch.stack(cos, dim=-1)
