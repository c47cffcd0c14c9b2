"""Formula teacher weights of the multi-teacher KD baselines, as pure tensor functions.

Every function has the signature

    fn(teacher_logits (M, B, C), targets (B,), student_logits (B, C), **kw) -> weights (B, M)

(M teachers, B samples, C classes), works for any M >= 1, never needs gradients (inputs are
detached) and returns weights on the inputs' device that, unless stated otherwise, sum to 1 over
teachers. The engine turns them into the loss `CE + alpha * mean_i sum_m w_im KL_im (+ beta *
mean_i sum_m w_im MSE_im)`.

`normalization="reference"` (EBKD, CA-MKD) reproduces the original code's effective KD strength:
those repositories compute `sum_i sum_m w_im KL_im / (B * M)`, so the weights returned are the
original weights divided by M (see /work/shared/reference/kd-baselines.md, section 1).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .qp import capped_simplex_min_norm

__all__ = ["aver", "no_kd", "best", "drop_worst", "random", "ebkd", "ca_mkd", "ca_mkd_feature", "aekd",
           "ebkd_from_entropy", "ca_mkd_from_ce",
           "aekd_logit_gradients",
           "WEIGHT_FUNCTIONS", "NORMALIZATIONS"]

NORMALIZATIONS = ("sum_to_one", "reference")
WeightFn = Callable[..., torch.Tensor]


def _check(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor):
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits: expected shape (M, B, C), got {tuple(teacher_logits.shape)}")
    m, b, c = teacher_logits.shape
    if targets is not None and tuple(targets.shape) != (b,):
        raise ValueError(f"targets: expected shape ({b},) to match teacher_logits (M, B, C) = "
                         f"{tuple(teacher_logits.shape)}, got {tuple(targets.shape)}")
    if student_logits is not None and tuple(student_logits.shape) != (b, c):
        raise ValueError(f"student_logits: expected shape ({b}, {c}), got {tuple(student_logits.shape)}")
    return m, b, c


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {list(NORMALIZATIONS)}, got {normalization!r}")


def _uniform(m: int, b: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((b, m), 1.0 / m, dtype=torch.float32, device=like.device)


@torch.no_grad()
def aver(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """AVER: equal weights, `w_im = 1 / M` (You et al., KDD 2017; the MTKD-RL code's `train_avg`).

    Returns (B, M).
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    return _uniform(m, b, teacher_logits)


@torch.no_grad()
def no_kd(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """No KD (reference row): `w_im = 0`, so the loss is the student's cross-entropy alone.

    The one function whose weights do not sum to 1. Returns (B, M) zeros.
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    return torch.zeros((b, m), dtype=torch.float32, device=teacher_logits.device)


@torch.no_grad()
def best(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
         val_acc: Sequence[float]) -> torch.Tensor:
    """Best single teacher: `w_im = 1[m = argmax_j valacc_j]`, chosen by **validation** accuracy
    (never test); ties go to the first teacher. Single-teacher KD (Hinton et al., 2015) with the
    strongest member of the pool.

    Args:
        val_acc: (M,) the teachers' validation accuracies.
    Returns (B, M) one-hot rows.
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    acc = np.asarray(val_acc, dtype=np.float64).reshape(-1)
    if acc.shape != (m,):
        raise ValueError(f"val_acc: expected {m} validation accuracies (one per teacher), got shape {acc.shape}")
    w = torch.zeros((b, m), dtype=torch.float32, device=teacher_logits.device)
    w[:, int(np.argmax(acc))] = 1.0
    return w


def drop_worst(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
               val_acc: Sequence[float]) -> torch.Tensor:
    """Drop the weakest teacher: `w_im = 0` for the teacher with the lowest **validation**
    accuracy, `1 / (M - 1)` for the others (ties drop the last such teacher). With M = 1 there is
    nothing to drop while keeping KD, so the only teacher keeps weight 1 (= AVER). The fixed
    weighting that the embedded benchmark's unreliable teacher calls for, and the default
    comparison arm of `baselines.diagnose`.

    Args:
        val_acc: (M,) the teachers' validation accuracies.
    Returns (B, M) rows.
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    acc = np.asarray(val_acc, dtype=np.float64).reshape(-1)
    if acc.shape != (m,):
        raise ValueError(f"val_acc: expected {m} validation accuracies (one per teacher), got shape {acc.shape}")
    w = torch.full((b, m), 1.0 / max(m - 1, 1), dtype=torch.float32, device=teacher_logits.device)
    if m > 1:
        w[:, m - 1 - int(np.argmin(acc[::-1]))] = 0.0
    return w


@torch.no_grad()
def random(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
           rng: np.random.Generator, concentration: float = 1.0, per_sample: bool = False) -> torch.Tensor:
    """Random weights: `w ~ Dirichlet(concentration * 1_M)`, one draw per batch (or per sample).

    A control that tells whether a weighting policy is better than chance. Draws come from the
    seeded numpy generator `rng`, so a run is reproducible from its seed.

    Returns (B, M); the rows are identical unless `per_sample`.
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    if not concentration > 0:
        raise ValueError(f"concentration: expected a number > 0, got {concentration!r}")
    draws = rng.dirichlet(np.full(m, float(concentration)), size=b if per_sample else 1)
    w = torch.as_tensor(draws, dtype=torch.float32, device=teacher_logits.device)
    return w.expand(b, m).contiguous()


@torch.no_grad()
def ebkd(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
         normalization: str = "sum_to_one") -> torch.Tensor:
    """EBKD, entropy-based KD (Kwon et al., ICASSP 2020, doi 10.1109/ICASSP40776.2020.9054698;
    vision code: the `EBKD` branch of Rorozhl/CA-MKD `loops.py`).

        H_im = -sum_c q_imc log q_imc,  q_im = softmax(z_m(i))  (T = 1)
        w_im = 1 - H_im / sum_j H_ij

    Confident (low-entropy) teachers get more weight. The original weights sum to M - 1;
    "sum_to_one" divides them by M - 1, "reference" by M (the original loss divides by B * M).
    M = 1 gives weight 1 (the formula would give 0, i.e. no KD); if every teacher is exactly
    certain (all H = 0) the weights are uniform. Labels and student are not used.

    Returns (B, M).
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    _check_normalization(normalization)
    if m == 1:
        return torch.ones((b, 1), dtype=torch.float32, device=teacher_logits.device)
    logp = F.log_softmax(teacher_logits.detach().double(), dim=-1)          # log_softmax: stable
    return ebkd_from_entropy(-(logp.exp() * logp).sum(-1).T, normalization=normalization)


@torch.no_grad()
def ebkd_from_entropy(entropy: torch.Tensor, *, normalization: str = "sum_to_one") -> torch.Tensor:
    """EBKD's weights from the teachers' entropies H (B, M) (`ebkd`'s formula after its entropy):
    the form dense tasks use, with H the teacher's mean pixel / location entropy of each image
    (`Batch.teacher_entropy`). Returns (B, M)."""
    _check_normalization(normalization)
    b, m = entropy.shape
    if m == 1:
        return torch.ones((b, 1), dtype=torch.float32, device=entropy.device)
    entropy = entropy.detach().double()
    total = entropy.sum(1, keepdim=True)
    share = torch.where(total > 0, entropy / total.clamp_min(1e-300), torch.full_like(entropy, 1.0 / m))
    w = 1.0 - share                                                         # sums to M - 1
    w = w / (m - 1) if normalization == "sum_to_one" else w / m
    return w.float()


@torch.no_grad()
def ca_mkd(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
           normalization: str = "sum_to_one") -> torch.Tensor:
    """CA-MKD, confidence-aware logit weights (Zhang, Chen, Wang, ICASSP 2022, arXiv 2201.00007;
    code Rorozhl/CA-MKD `loops.py`, branch `CAMKD`).

        CE_im = CE(z_m(i), y_i)  (T = 1)
        w_im  = (1 - softmax_m(CE_i)_m) / (M - 1)

    Teachers whose prediction is closer to the label get more weight; sums to 1 per sample.
    "reference" also divides by M, as the original loss (`sum w KL / (B * M)`). M = 1 gives
    weight 1 (the formula is 0/0). These are the logit weights; `ca_mkd_feature` gives the
    feature weights.

    Returns (B, M).
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    _check_normalization(normalization)
    if m == 1:
        return torch.ones((b, 1), dtype=torch.float32, device=teacher_logits.device)
    logits = teacher_logits.detach().double()
    return ca_mkd_from_ce(F.cross_entropy(logits.permute(1, 2, 0), targets.expand(m, b).T, reduction="none"),
                          normalization=normalization)


@torch.no_grad()
def ca_mkd_from_ce(ce: torch.Tensor, *, normalization: str = "sum_to_one") -> torch.Tensor:
    """CA-MKD's weights from the teachers' CE vs the ground truth (B, M) (`ca_mkd`'s formula after
    its CE): the form dense tasks use, with the per-image CE of each teacher (mean over valid
    pixels, or its detection loss; `Batch.teacher_ce`). Returns (B, M)."""
    _check_normalization(normalization)
    b, m = ce.shape
    if m == 1:
        return torch.ones((b, 1), dtype=torch.float32, device=ce.device)
    w = (1.0 - torch.softmax(ce.detach().double(), dim=1)) / (m - 1)
    return (w if normalization == "sum_to_one" else w / m).float()


@torch.no_grad()
def ca_mkd_feature(head_logits: torch.Tensor, targets: torch.Tensor, student_logits: Optional[torch.Tensor] = None,
                   *, normalization: str = "sum_to_one") -> torch.Tensor:
    """CA-MKD's feature weights (Rorozhl/CA-MKD `distiller_zoo/CAMKD.py`, `models/util.py` `CalWeight`).

    `head_logits[m]` (M, B, C) are teacher m's own classifier head (its pooling and fc, the last
    element of the original's `distill_seq()`) applied to the student feature map projected to
    teacher m, `head_m(Phi_m(F_s))`. The confidence formula of the logit weights is applied to
    them:

        CE_im = CE(head_m(Phi_m(F_s))(i), y_i),   w_im = (1 - softmax_m(CE_i)_m) / (M - 1)

    so a teacher gets more feature weight where the student's feature, read through that
    teacher's classifier, already predicts the label. "reference" divides by M, as the original
    feature loss (`sum w MSE / (B * M)`). Detached: the original lets the loss back-propagate into
    the weights (through the projectors and the frozen heads); every policy here gives constant
    weights. Returns (B, M).
    """
    return ca_mkd(head_logits, targets, student_logits, normalization=normalization)


@torch.no_grad()
def aekd_logit_gradients(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                         temperature: float = 4.0) -> torch.Tensor:
    """Batch-mean gradient of each teacher's KD loss w.r.t. the student logits, in closed form.

    For L_m = (1/B) sum_i T^2 KL(softmax(z_m(i)/T) || softmax(z_s(i)/T)):
        dL_m / dz_s(i) = (T / B) (softmax(z_s(i)/T) - softmax(z_m(i)/T)),
    and AE-KD averages these over the batch: g_m = mean_i dL_m / dz_s(i).

    Returns (M, C) float64.
    """
    _check(teacher_logits, None, student_logits)
    b = teacher_logits.shape[1]
    p_s = torch.softmax(student_logits.detach().double() / temperature, dim=-1)      # (B, C)
    p_t = torch.softmax(teacher_logits.detach().double() / temperature, dim=-1)      # (M, B, C)
    return (temperature / b) * (p_s[None] - p_t).mean(1)


@torch.no_grad()
def aekd(teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor, *,
         temperature: float = 4.0, cap: float = 0.6, normalize_gradients: bool = False) -> torch.Tensor:
    """AEKD, "Agree to Disagree" adaptive ensemble KD (Du et al., NeurIPS 2020; code
    AnTuo1998/AE-KD `loops.py` + `optimization.py`), logit variant.

        g_m     = batch-mean gradient of teacher m's KD loss w.r.t. the student logits  (M, C)
        alpha   = argmin_{alpha in simplex, alpha_m <= cap} || sum_m alpha_m g_m ||^2
        w_im    = alpha_m  (one weight vector per batch)

    The original gets g by M extra backward passes and solves the QP with scikit-learn's
    OneClassSVM (nu = 1 / (cap * M) clamped to [1/M, 1], i.e. the cap clamped to [1/M, 1]) on the
    host. Here g is closed-form (`aekd_logit_gradients`, no backward pass) and the QP is solved
    exactly on the device (`baselines.qp.capped_simplex_min_norm`). `normalize_gradients`
    reproduces the original's `--svm_norm`: the QP uses unit-norm g_m, then alpha_m is divided by
    ||g_m|| and renormalised. The labels are not used.

    Returns (B, M) with identical rows.
    """
    m, b, _c = _check(teacher_logits, targets, student_logits)
    g = aekd_logit_gradients(teacher_logits, student_logits, temperature)            # (M, C)
    norms = g.norm(dim=1)
    if normalize_gradients:
        g = g / norms.clamp_min(1e-30)[:, None]
    alpha = capped_simplex_min_norm(g @ g.T, cap)
    if normalize_gradients:
        alpha = alpha / norms.clamp_min(1e-30)
        alpha = alpha / alpha.sum()
    return alpha.float()[None].expand(b, m).contiguous()


WEIGHT_FUNCTIONS: Dict[str, WeightFn] = {
    "aver": aver, "no-kd": no_kd, "best": best, "drop-worst": drop_worst, "random": random, "ebkd": ebkd,
    "ca-mkd": ca_mkd, "aekd": aekd,
}
"""Policy name -> weight function."""
