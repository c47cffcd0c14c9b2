"""The engine's virtual-step API: a functional forward under given parameters and a differentiable
optimiser step equal the real ones, and never change the real student."""

from __future__ import annotations

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
