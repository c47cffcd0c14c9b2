"""The formula weight functions against their formulas, and AEKD's QP against scipy and the
original OneClassSVM procedure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import weights as W
from baselines.qp import capped_simplex_min_norm, effective_cap


def _logits(m: int = 3, b: int = 5, c: int = 4, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    t = scale * torch.randn(m, b, c, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    s = torch.randn(b, c, generator=g)
    return t, y, s


def _np_softmax(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def _all_fns(m: int):
    rng = np.random.default_rng(0)
    return {"aver": {}, "no-kd": {}, "best": {"val_acc": np.linspace(0.5, 0.9, m)},
            "drop-worst": {"val_acc": np.linspace(0.5, 0.9, m)}, "random": {"rng": rng},
            "ebkd": {}, "ca-mkd": {}, "aekd": {}}


def test_aver_is_uniform_and_no_kd_is_zero():
    t, y, s = _logits(m=4)
    assert torch.equal(W.aver(t, y, s), torch.full((5, 4), 0.25))
    assert torch.equal(W.no_kd(t, y, s), torch.zeros(5, 4))


def test_ebkd_matches_formula_on_hand_built_logits():
    # Teacher 0 is confident, teacher 1 uniform, teacher 2 in between.
    t = torch.tensor([[[8.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[1.0, 0.5, 0.0]]])   # (M=3, B=1, C=3)
    y, s = torch.tensor([0]), torch.zeros(1, 3)
    q = _np_softmax(t.numpy()[:, 0])
    h = -(q * np.log(q)).sum(-1)                                                   # (M,)
    raw = 1.0 - h / h.sum()                                                        # sums to M - 1
    np.testing.assert_allclose(W.ebkd(t, y, s)[0].numpy(), raw / 2, rtol=1e-6)
    np.testing.assert_allclose(W.ebkd(t, y, s, normalization="reference")[0].numpy(), raw / 3, rtol=1e-6)
    w = W.ebkd(t, y, s)[0]
    assert w[0] > w[2] > w[1]                 # lower entropy -> larger weight
    assert W.ebkd(t, y, s, normalization="reference").sum().item() == pytest.approx(2 / 3)


def test_ebkd_two_teachers_closed_form():
    t, y, s = _logits(m=2, b=6)
    q = _np_softmax(t.double().numpy())
    h = -(q * np.log(q)).sum(-1).T                                                 # (B, 2)
    np.testing.assert_allclose(W.ebkd(t, y, s).numpy(), h[:, ::-1] / h.sum(1, keepdims=True), rtol=1e-5)


def test_ca_mkd_matches_formula_on_hand_built_logits():
    t = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
                      [[0.0, 5.0, 0.0], [0.0, 0.0, 3.0]],
                      [[1.0, 1.0, 1.0], [1.0, 2.0, 0.0]]])                          # (M=3, B=2, C=3)
    y, s = torch.tensor([0, 1]), torch.zeros(2, 3)
    logp = np.log(_np_softmax(t.double().numpy()))                                 # (M, B, C)
    ce = -np.stack([logp[:, i, y[i]] for i in range(2)])                           # (B, M)
    expected = (1.0 - _np_softmax(ce, axis=1)) / 2
    np.testing.assert_allclose(W.ca_mkd(t, y, s).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(W.ca_mkd(t, y, s, normalization="reference").numpy(), expected / 3, rtol=1e-6)
    np.testing.assert_allclose(W.ca_mkd(t, y, s).sum(1).numpy(), [1.0, 1.0], rtol=1e-6)
    assert W.ca_mkd(t, y, s)[0].argmax() == 0 and W.ca_mkd(t, y, s)[1].argmax() == 0  # right teacher wins


def test_ca_mkd_uniform_when_teachers_agree():
    t, y, s = _logits(m=1, b=4)
    same = t.expand(3, -1, -1)
    np.testing.assert_allclose(W.ca_mkd(same, y, s).numpy(), np.full((4, 3), 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(W.ebkd(same, y, s).numpy(), np.full((4, 3), 1 / 3), rtol=1e-6)


def test_best_uses_validation_accuracy_first_on_ties():
    t, y, s = _logits(m=3)
    assert W.best(t, y, s, val_acc=[0.5, 0.9, 0.7])[:, 1].eq(1).all()
    assert W.best(t, y, s, val_acc=[0.8, 0.8, 0.1]).argmax(1).eq(0).all()
    with pytest.raises(ValueError, match="val_acc: expected 3"):
        W.best(t, y, s, val_acc=[0.5, 0.9])


def test_random_is_seeded_dirichlet():
    t, y, s = _logits(m=3, b=8)
    a = W.random(t, y, s, rng=np.random.default_rng(7))
    b = W.random(t, y, s, rng=np.random.default_rng(7))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(1), torch.ones(8)) and (a >= 0).all()
    assert torch.equal(a, a[:1].expand(8, 3))                       # one draw per batch
    per = W.random(t, y, s, rng=np.random.default_rng(7), per_sample=True)
    assert not torch.equal(per[0], per[1])
    with pytest.raises(ValueError, match="concentration"):
        W.random(t, y, s, rng=np.random.default_rng(0), concentration=0.0)


@pytest.mark.parametrize("name", sorted(W.WEIGHT_FUNCTIONS))
def test_single_teacher_works(name):
    t, y, s = _logits(m=1)
    w = W.WEIGHT_FUNCTIONS[name](t, y, s, **_all_fns(1)[name])
    assert w.shape == (5, 1) and torch.isfinite(w).all()
    assert torch.equal(w, torch.zeros(5, 1) if name == "no-kd" else torch.ones(5, 1))


@pytest.mark.parametrize("name", ["aver", "ebkd", "ca-mkd", "aekd"])
def test_permutation_equivariant_and_sums_to_one(name):
    t, y, s = _logits(m=4, b=6, c=5, seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    fn = W.WEIGHT_FUNCTIONS[name]
    w = fn(t, y, s)
    torch.testing.assert_close(fn(t[perm], y, s), w[:, perm], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.sum(1), torch.ones(6), atol=1e-6, rtol=0)
    assert (w >= 0).all()


def test_bad_shapes_and_options_are_one_line_errors():
    t, y, s = _logits()
    with pytest.raises(ValueError, match=r"teacher_logits: expected shape \(M, B, C\)"):
        W.aver(t[0], y, s)
    with pytest.raises(ValueError, match="targets: expected shape"):
        W.ca_mkd(t, y[:2], s)
    with pytest.raises(ValueError, match="student_logits: expected shape"):
        W.aekd(t, y, s[:, :2])
    with pytest.raises(ValueError, match="normalization: expected one of"):
        W.ebkd(t, y, s, normalization="bogus")


# --- AEKD --------------------------------------------------------------------------------------
def test_aekd_logit_gradients_equal_autograd():
    t, y, s = _logits(m=3, b=7, c=6, seed=1)
    temp = 4.0
    z = s.double().clone().requires_grad_(True)
    expected = []
    for m in range(3):
        p_t = F.softmax(t[m].double() / temp, -1)
        kd = temp ** 2 * (p_t * (p_t.log() - F.log_softmax(z / temp, -1))).sum(-1).mean()
        (grad,) = torch.autograd.grad(kd, z)
        expected.append(grad.mean(0))                                  # AE-KD averages over the batch
    torch.testing.assert_close(W.aekd_logit_gradients(t, s, temp), torch.stack(expected), rtol=1e-9, atol=1e-12)


def _scipy_qp(gram: np.ndarray, cap: float) -> np.ndarray:
    from scipy.optimize import minimize

    m = gram.shape[0]
    best = None
    for x0 in [np.full(m, 1.0 / m)] + list(np.random.default_rng(0).dirichlet(np.ones(m), 4)):
        r = minimize(lambda a: a @ gram @ a, x0, jac=lambda a: 2 * gram @ a, method="SLSQP",
                     bounds=[(0.0, cap)] * m, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
                     options={"ftol": 1e-15, "maxiter": 500})
        best = r if best is None or r.fun < best.fun else best
    return best.x


@pytest.mark.parametrize("m,cap", [(2, 0.6), (3, 0.6), (4, 0.6), (4, 0.3), (5, 1.0), (6, 0.45), (3, 2.0)])
def test_aekd_qp_equals_scipy(m, cap):
    rng = np.random.default_rng(m * 10 + int(cap * 10))
    for _ in range(5):
        g = rng.normal(size=(m, m + 2))               # full row rank: a unique minimiser
        gram = g @ g.T
        ours = capped_simplex_min_norm(torch.tensor(gram), cap).numpy()
        ref = _scipy_qp(gram, effective_cap(cap, m))
        assert ours.sum() == pytest.approx(1.0, abs=1e-9)
        assert ours.min() >= 0 and ours.max() <= effective_cap(cap, m) + 1e-12
        assert ours @ gram @ ours <= ref @ gram @ ref * (1 + 1e-7) + 1e-12
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_aekd_qp_degenerate_cases():
    # Rank-deficient Gram (two identical gradients): still feasible and optimal, ties split evenly.
    g = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.2]])
    gram = g @ g.T
    ours = capped_simplex_min_norm(torch.tensor(gram), 0.6).numpy()
    ref = _scipy_qp(gram, 0.6)
    assert ours @ gram @ ours <= ref @ gram @ ref + 1e-9
    assert ours[0] == pytest.approx(ours[1], abs=1e-6)
    # Zero gradients (student equals every teacher): uniform. Cap below 1/M: uniform.
    np.testing.assert_allclose(capped_simplex_min_norm(torch.zeros(3, 3), 0.6).numpy(), np.full(3, 1 / 3))
    np.testing.assert_allclose(capped_simplex_min_norm(torch.tensor(gram), 0.2).numpy(), np.full(3, 1 / 3))
    # Cap 1 is plain MGDA: opposite gradients of different length balance to a zero-norm point.
    gram2 = np.array([[1.0, -2.0], [-2.0, 4.0]])
    np.testing.assert_allclose(capped_simplex_min_norm(torch.tensor(gram2), 1.0).numpy(), [2 / 3, 1 / 3], atol=1e-7)
    with pytest.raises(ValueError, match="supports up to 12 teachers"):
        capped_simplex_min_norm(torch.eye(13), 0.6)


def test_aekd_matches_original_oneclass_svm():
    """The original procedure: sklearn OneClassSVM(precomputed Gram, nu) -> dual_coef / (M nu)."""
    from sklearn.svm import OneClassSVM

    for seed in range(6):
        t, y, s = _logits(m=3, b=16, c=10, seed=seed, scale=3.0)
        g = W.aekd_logit_gradients(t, s).numpy()
        m = 3
        nu = min(max(1.0 / (0.6 * m), 1.0 / m), 1.0)
        svm = OneClassSVM(kernel="precomputed", nu=nu, tol=1e-10).fit(g @ g.T)
        ref = np.zeros(m)
        ref[svm.support_] = svm.dual_coef_[0] / (m * nu)
        np.testing.assert_allclose(W.aekd(t, y, s)[0].numpy(), ref, atol=1e-3)


def test_aekd_normalized_gradients_option():
    t, y, s = _logits(m=3, b=8, c=5, seed=4)
    g = W.aekd_logit_gradients(t, s).numpy()
    norms = np.linalg.norm(g, axis=1)
    unit = g / norms[:, None]
    alpha = _scipy_qp(unit @ unit.T, 0.6) / norms
    np.testing.assert_allclose(W.aekd(t, y, s, normalize_gradients=True)[0].numpy(), alpha / alpha.sum(), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_aekd_on_cuda_matches_cpu():
    t, y, s = _logits(m=4, b=64, c=10, seed=5)
    cpu = W.aekd(t, y, s)
    gpu = W.aekd(t.cuda(), y.cuda(), s.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=1e-5)
    for name in ("ebkd", "ca-mkd", "aver"):
        fn = W.WEIGHT_FUNCTIONS[name]
        torch.testing.assert_close(fn(t.cuda(), y.cuda(), s.cuda()).cpu(), fn(t, y, s), atol=1e-6, rtol=1e-5)
