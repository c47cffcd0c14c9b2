"""Exact minimum-norm point of a capped simplex: the small QP inside AEKD.

    alpha* = argmin_alpha  alpha^T G alpha   s.t.  sum_m alpha_m = 1,  0 <= alpha_m <= cap

with G = g g^T (M, M) the Gram matrix of the teachers' gradients. AE-KD's code solves it with a
scikit-learn OneClassSVM on the host every step; here it is solved exactly on the tensors' device
by enumerating the faces of the feasible set: each teacher is at its lower bound 0, at the cap, or
free. For a face, the free weights solve the equality-constrained KKT system (a batched linear
solve over all faces at once); the answer is the feasible face solution with the smallest
objective. A tiny ridge makes the problem strictly convex, so every face system is non-singular and
the minimiser is unique (ties between equally good teachers split evenly instead of arbitrarily).
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

__all__ = ["capped_simplex_min_norm", "effective_cap", "MAX_TEACHERS"]

MAX_TEACHERS = 12
"""Largest M the face enumeration accepts (3^12 candidate faces before pruning)."""

_RIDGE = 1e-9   # relative to the largest diagonal entry of G
_TOL = 1e-7     # feasibility tolerance of a face solution (G is rescaled to unit diagonal max)
_FACES: Dict[Tuple[int, int], torch.Tensor] = {}


def effective_cap(cap: float, num_teachers: int) -> float:
    """The cap AE-KD actually applies: its OneClassSVM uses nu = 1 / (cap * M) clamped to [1/M, 1],
    i.e. an upper bound 1 / (nu * M) = cap clamped to [1/M, 1]."""
    return min(max(float(cap), 1.0 / num_teachers), 1.0)


def _faces(m: int, max_upper: int) -> torch.Tensor:
    """(F, M) int8 codes of every face: 0 = at 0, 1 = at the cap, 2 = free. Faces with more than
    `max_upper` weights at the cap cannot sum to 1 and are dropped."""
    key = (m, max_upper)
    if key not in _FACES:
        grids = torch.meshgrid(*[torch.arange(3, dtype=torch.int8)] * m, indexing="ij")
        codes = torch.stack([g.reshape(-1) for g in grids], dim=1)
        _FACES[key] = codes[(codes == 1).sum(1) <= max_upper]
    return _FACES[key]


def capped_simplex_min_norm(gram: torch.Tensor, cap: float) -> torch.Tensor:
    """Solve `min a^T G a` over {sum a = 1, 0 <= a <= cap} exactly.

    Args:
        gram: (M, M) symmetric positive semi-definite matrix, any float dtype and device.
        cap: upper bound of each weight; clamped to [1/M, 1] (see `effective_cap`).

    Returns:
        (M,) weights in `gram`'s dtype and device.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram: expected a square (M, M) matrix, got shape {tuple(gram.shape)}")
    m = gram.shape[0]
    if m > MAX_TEACHERS:
        raise ValueError(f"aekd: the exact QP enumerates the faces of the capped simplex and supports up "
                         f"to {MAX_TEACHERS} teachers; got M = {m}")
    if not torch.isfinite(gram).all():
        raise ValueError("gram: expected finite entries (the teachers' KD gradients contain NaN or inf)")
    out_dtype, device = gram.dtype, gram.device
    u = effective_cap(cap, m)
    if m == 1 or u * m <= 1.0 + 1e-12:  # only the uniform point is feasible
        return torch.full((m,), 1.0 / m, dtype=out_dtype, device=device)

    g = gram.to(torch.float64)
    g = 0.5 * (g + g.T)
    scale = g.diagonal().max()
    g = g / scale if scale > 0 else torch.zeros_like(g)  # the minimiser is scale-invariant
    eye = torch.eye(m, dtype=torch.float64, device=device)
    hess = 2.0 * (g + _RIDGE * eye)

    codes = _faces(m, int(math.floor(1.0 / u + 1e-9))).to(device)
    free, upper = codes == 2, codes == 1
    has_free = free.any(1)
    n = codes.shape[0]
    # KKT system per face, unknowns (alpha, lambda): free rows H_i alpha - lambda = 0, bound rows
    # alpha_i = bound, last row sum(alpha) = 1 (or lambda = 0 for a face without free weights).
    a = torch.zeros((n, m + 1, m + 1), dtype=torch.float64, device=device)
    a[:, :m, :m] = torch.where(free[:, :, None], hess.expand(n, m, m), eye.expand(n, m, m))
    a[:, :m, m] = torch.where(free, -1.0, 0.0).to(torch.float64)
    a[:, m, :m] = has_free[:, None].to(torch.float64)
    a[:, m, m] = (~has_free).to(torch.float64)
    b = torch.zeros((n, m + 1), dtype=torch.float64, device=device)
    b[:, :m] = torch.where(upper, u, 0.0).to(torch.float64)
    b[:, m] = has_free.to(torch.float64)
    alpha = torch.linalg.solve(a, b)[:, :m]                                     # (F, M)

    feasible = ((alpha >= -_TOL) & (alpha <= u + _TOL)).all(1) & ((alpha.sum(1) - 1.0).abs() <= _TOL)
    objective = torch.einsum("fi,ij,fj->f", alpha, hess, alpha)
    objective = torch.where(feasible, objective, torch.full_like(objective, math.inf))
    k = objective.argmin()
    best = alpha[k].clamp(0.0, u)
    # Put the clamp's rounding residual on the free weights so the bounds stay exact.
    n_free = free[k].sum()
    if n_free > 0:
        best = torch.where(free[k], best + (1.0 - best.sum()) / n_free, best).clamp(0.0, u)
    return best.to(out_dtype)
