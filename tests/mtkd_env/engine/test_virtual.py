"""The engine's virtual-step API: a functional forward under given parameters and a differentiable
optimiser step equal the real ones, and never change the real student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.engine.virtual import VirtualSGD


def _snapshot(engine) -> dict:
    state = {f"s.{k}": v.clone() for k, v in engine.student.state_dict().items()}
    state.update({f"p.{k}": v.clone() for k, v in engine.projectors.state_dict().items()})
    return state


def test_forward_with_live_parameters_reproduces_the_prepared_batch(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config())
    env.reset(seed=0)
    eng = env.engine
    for _ in range(2):  # momentum buffers and BN statistics exist
        env.step_weights([1 / 3] * 3)
    batch, before = eng.batch, _snapshot(eng)
    again = eng.forward_with(batch.x, batch.y, eng.trainable_parameters(), index=batch.index)
    for name in ("kl", "feat_mse", "student_ce", "cos", "teacher_ce", "student_correct"):
        torch.testing.assert_close(getattr(again, name), getattr(batch, name), rtol=1e-5, atol=1e-6)
    assert again.student_feature_map is not None and len(again.teacher_feature_maps) == 3
    after = _snapshot(eng)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched


def test_virtual_step_equals_the_real_optimizer_step(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(weight_decay=5e-4))
    env.reset(seed=1)
    eng = env.engine
    w = torch.tensor([0.5, 0.3, 0.2])
    for _ in range(2):
        env.step_weights(w.numpy())
    opt = eng.virtual_optimizer()
    assert opt.nesterov and opt.momentum == 0.9 and opt.lr == eng.optimizer.param_groups[0]["lr"]
    assert all(b is not None for b in opt.momentum_buffers.values())
    virtual = eng.forward_with(eng.batch.x, eng.batch.y, opt.params, index=eng.batch.index)
    total, _, _ = eng.loss_terms(virtual, w, w)
    new = opt.step(total.mean(), create_graph=False)
    before = _snapshot(eng)
    eng.apply(w, w)  # the real step on the same batch and weights
    for name, p in eng.trainable_parameters().items():
        torch.testing.assert_close(new[name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(before["s.body.0.weight"], eng.student.body[0].weight.detach())


def test_virtual_sgd_is_differentiable_through_its_steps():
    """d/dw of L(p2) with p1 = p0 - lr (dL1/dp (p0; w) + wd p0), p2 likewise: closed form on a quadratic."""
    lr, wd = 0.1, 0.01
    w = torch.tensor(2.0, requires_grad=True)
    p0 = torch.tensor([1.0, -1.0], requires_grad=True)
    opt = VirtualSGD({"p": p0}, {}, lr=lr, weight_decay=wd)
    for _ in range(2):
        opt.step(0.5 * w * (opt.params["p"] ** 2).sum())
    outer = opt.params["p"].sum()
    (grad,) = torch.autograd.grad(outer, w)
    factor = 1 - lr * (w.detach() + wd)                  # p_k = factor^k p0
    expected = 2 * factor * (-lr) * p0.detach().sum()    # d/dw factor^2 * sum(p0)
    torch.testing.assert_close(grad, expected)


def _inner_products(eng) -> torch.Tensor:
    """lr · <∇L_probe, ∇kl[i, m]> (B, M) by autograd on the live student (eval-mode probe loss, as
    `kd_credit`), the first-order quantity `kd_credit` approximates by a finite step."""
    from torch.func import functional_call

    params = {k: p.detach().requires_grad_(True) for k, p in eng.student.named_parameters()}
    buffers = {k: b.clone() for k, b in eng.student.named_buffers()}
    eng.student.eval()
    probe = eng.task.supervised_loss(functional_call(eng.student, (params, buffers), (eng.probe_x,)), eng.probe_y)
    eng.student.train()
    g = torch.autograd.grad(probe, list(params.values()), allow_unused=True)
    batch = eng.forward_with(eng.batch.x, eng.batch.y, {f"student.{k}": v for k, v in params.items()},
                             index=eng.batch.index)
    lr = eng.optimizer.param_groups[0]["lr"]
    out = torch.zeros_like(batch.kl)
    for i in range(batch.kl.shape[0]):
        for m in range(batch.kl.shape[1]):
            gk = torch.autograd.grad(batch.kl[i, m], list(params.values()), retain_graph=True, allow_unused=True)
            out[i, m] = lr * sum((a * b).sum() for a, b in zip(g, gk) if a is not None and b is not None)
    return out.detach()


def test_kd_credit_is_the_first_order_probe_loss_drop_and_changes_nothing(synthetic_config):
    # A small learning rate keeps the finite step's second-order part well below the first-order one.
    env = MultiTeacherKDEnv(synthetic_config(lr=0.005, batch_size=8))
    env.reset(seed=3)
    eng = env.engine
    for _ in range(2):
        env.step_weights([1 / 3] * 3)
    before, grads = _snapshot(eng), [p.grad.clone() for p in eng.student.parameters()]
    credit = eng.kd_credit()
    assert credit.shape == (8, 3)
    after = _snapshot(eng)
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BN statistics
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, eng.student.parameters()))
    exact = _inner_products(eng)
    assert torch.corrcoef(torch.stack([credit.flatten(), exact.flatten()]))[0, 1] > 0.99
    assert abs(credit.norm() / exact.norm() - 1) < 0.05


def test_kd_credit_reward_prefers_the_terms_with_credit(synthetic_config):
    from mtkd_env.mdp.rewards import KDCredit, StepResult

    c = np.array([[3.0, 1.0, 2.0], [0.0, -1.0, 1.0]])
    result = lambda w: StepResult(step=1, loss=0.0, per_sample_loss=np.zeros(2), student_ce=0.0,  # noqa: E731
                                  student_acc=0.0, credits={"probe": c}, weights=np.asarray(w))
    reward = KDCredit()
    assert reward(result([1 / 3] * 3))[0] == pytest.approx(0.0, abs=1e-12)
    best, _ = reward(result([[1, 0, 0], [0, 0, 1]]))
    worst, _ = reward(result([[0, 1, 0], [0, 1, 0]]))
    assert best > 0 > worst and best == pytest.approx(-worst)
    # Adding a constant to a row (credit every weighting of that sample gets) changes nothing.
    shifted = KDCredit()(StepResult(step=1, loss=0.0, per_sample_loss=np.zeros(2), student_ce=0.0, student_acc=0.0,
                                    credits={"probe": c + np.array([[5.0], [-2.0]])}, weights=np.array([[1, 0, 0], [0, 0, 1]])))
    assert shifted[0] == pytest.approx(best)


def test_kd_credit_reward_runs_in_the_env_and_not_in_the_batched_vector_env(synthetic_config):
    from mtkd_env.config import ConfigError
    from mtkd_env.vector_env import MultiTeacherKDVectorEnv

    env = MultiTeacherKDEnv(synthetic_config(reward="kd_credit", log_rewards=["kd_label_credit"], granularity="sample",
                                             sample_obs_embeddings=False))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    _, r, *_, info = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    assert np.isfinite(r) and r != 0 and "kd_credit_advantage" in info
    # each reward reads its own credit: the label credit's reward differs from the probe credit's
    assert np.isfinite(info["rewards"]["kd_label_credit"]) and info["rewards"]["kd_label_credit"] != r
    with pytest.raises(ConfigError, match="credit rewards .kd_credit, kd_label_credit.: the batched vector env cannot compute it"):
        MultiTeacherKDVectorEnv(2, synthetic_config(reward="kd_credit"))


def test_label_credit_is_the_logit_space_inner_product_with_the_label_gradient(synthetic_config):
    import torch.nn.functional as F

    env = MultiTeacherKDEnv(synthetic_config())
    env.reset(seed=4)
    eng = env.engine
    env.step_weights([1 / 3] * 3)
    credit = eng.kd_credit("label")
    batch, temp = eng.batch, eng.config.kd_temperature
    z = batch.student_logits.detach().double().requires_grad_(True)
    ce = F.cross_entropy(z, batch.y, reduction="sum")  # row i's gradient is ∇_z CE(z_i, y_i)
    (g_ce,) = torch.autograd.grad(ce, z)
    expected = torch.zeros_like(credit, dtype=torch.float64)
    for m in range(eng.num_teachers):
        pt = torch.softmax(batch.teacher_logits[m].double() / temp, 1)
        kl = temp ** 2 * (pt * (pt.log() - torch.log_softmax(z / temp, 1))).sum()
        (g_kl,) = torch.autograd.grad(kl, z)
        expected[:, m] = (g_kl * g_ce).sum(1)
    torch.testing.assert_close(credit.double(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="target must be 'probe' or 'label'"):
        eng.kd_credit("val")
