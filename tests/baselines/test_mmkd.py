"""MMKD: the unrolled meta-gradient equals finite differences, no meta step means the untrained
weights, the meta step never changes the real student, the hard buffer, resume, M = 1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from baselines import make_policy
from mtkd_env.episodes import run_episode
from baselines.mmkd import HardBuffer, gram_rows, logit_inputs
from mtkd_env.env import MultiTeacherKDEnv


def _bound(synthetic_config, seed: int = 0, **options):
    policy = make_policy("mmkd", **options)
    env = MultiTeacherKDEnv(synthetic_config(**policy.env_overrides))
    env.reset(seed=seed)
    policy.bind(env)
    policy.reset(seed)
    return env, policy


def _in_double(env, policy) -> None:
    """The same env and policy in float64 (every model, the data, the weight networks), so that a
    finite difference resolves the meta-gradient; the next batch is prepared in float64."""
    eng = env.engine
    for module in [eng.student, eng.projectors, policy.nets] + [t.model for t in eng.teachers]:
        module.double()
    eng.loader.x = eng.loader.x.double()
    eng.advance()


@pytest.mark.parametrize("net", ["logit_net", "feature_net"])
@pytest.mark.parametrize("virtual_steps", [1, 2])
def test_unrolled_meta_gradient_equals_finite_differences(synthetic_config, monkeypatch, net, virtual_steps):
    """Directional derivative of the outer CE (after `virtual_steps` matching steps and 1 CE step,
    SGD with momentum, Nesterov and weight decay) w.r.t. each weight network vs a central difference.

    The networks read the *detached* student logits and feature map (as the reference), so from the
    second virtual step on the outer loss also depends on the networks through those inputs, a path
    the meta-gradient deliberately stops. With 1 virtual step the inputs come from the live student
    and the real inputs are used; with 2 the student's columns are replaced by zeros so that the
    two derivatives are of the same function."""
    from baselines import mmkd

    if virtual_steps > 1:
        real_logit_inputs, real_gram_rows = mmkd.logit_inputs, mmkd.gram_rows

        def no_student(fn, width):
            def patched(batch):
                out = fn(batch).clone()
                out[:, -width(batch):] = 0.0
                return out
            return patched

        monkeypatch.setattr(mmkd, "logit_inputs", no_student(real_logit_inputs, lambda b: b.student_logits.shape[1]))
        monkeypatch.setattr(mmkd, "gram_rows", no_student(real_gram_rows, lambda b: len(b.y)))
    env, policy = _bound(synthetic_config, virtual_steps=virtual_steps)
    _in_double(env, policy)
    for _ in range(3):  # momentum buffers exist, the student has moved
        env.step_weights(*policy.act())
    x, y, index = policy.meta_batch()
    _, grads = policy.meta_gradient(x, y, index)
    params = list(policy.nets.parameters())
    chosen = {id(p) for p in getattr(policy, net).parameters()}
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * (id(p) in chosen) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))

    def loss_at(eps: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
        value = float(policy.outer_loss(x, y, index, create_graph=False).detach())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(eps * d)
        return value

    # Robust by construction: everything is float64 (checked), and the tolerance is derived from that
    # precision instead of being tuned on one CPU. A central difference has two errors:
    # - rounding: each loss value is off by a few units in the last place of its size (a sum of many
    #   terms whose order differs between BLAS kernels: allow 32 ulp), amplified by 1 / (2 eps);
    # - truncation: eps^2 |L'''| / 6; a relative 1e-4 of the derivative is far above it at eps 1e-6
    #   (the loss is smooth between ReLU kinks, which a step this small does not cross).
    assert all(p.dtype == torch.float64 for p in params) and x.dtype == torch.float64
    eps = 1e-6
    unit = torch.finfo(torch.float64).eps
    rounding = 32 * unit * max(abs(loss_at(0.0)), 1.0) / (2 * eps)
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(analytic) > 100 * rounding  # the network matters to the outer loss, and the check resolves it
    assert abs(numeric - analytic) <= rounding + 1e-4 * abs(analytic), (numeric, analytic, rounding)


def test_meta_step_changes_the_networks_but_never_the_student(synthetic_config):
    env, policy = _bound(synthetic_config)
    env.step_weights(*policy.act())
    student = {k: v.clone() for k, v in env.engine.student.state_dict().items()}
    optimizer = copy.deepcopy(env.engine.optimizer.state_dict())
    nets = [p.detach().clone() for p in policy.nets.parameters()]
    policy.meta_step()
    assert policy.meta_steps == 1 and np.isfinite(policy.last_outer_loss)
    assert any(not torch.equal(a, b) for a, b in zip(nets, policy.nets.parameters()))
    assert all(torch.equal(v, env.engine.student.state_dict()[k]) for k, v in student.items())
    after = env.engine.optimizer.state_dict()["state"]
    assert all(torch.equal(optimizer["state"][i]["momentum_buffer"], after[i]["momentum_buffer"]) for i in after)


def test_meta_freq_longer_than_the_episode_gives_the_untrained_weights(synthetic_config):
    """No meta step: the weights applied at every step are the freshly initialised networks' outputs."""
    policy = make_policy("mmkd", meta_freq=1000)
    env = MultiTeacherKDEnv(synthetic_config(**policy.env_overrides))
    fresh = make_policy("mmkd", meta_freq=1000)
    applied, untrained = [], []
    env.reset(seed=4)
    policy.bind(env)
    policy.reset(4)
    fresh.bind(env)
    fresh.reset(4)
    initial = [p.detach().clone() for p in policy.nets.parameters()]
    while True:
        with torch.no_grad():
            untrained.append([w.numpy() for w in fresh.network_weights(env.engine.batch)])
        w_logit, w_feat = policy.act()
        applied.append([w_logit, w_feat])
        *_, terminated, _, info = env.step_weights(w_logit, w_feat)
        if terminated:
            break
    assert policy.meta_steps == 0 and len(applied) == 8
    assert all(torch.equal(a, b) for a, b in zip(initial, policy.nets.parameters()))
    for (al, af), (ul, uf) in zip(applied, untrained):
        np.testing.assert_array_equal(al, ul)
        np.testing.assert_array_equal(af, uf)
    np.testing.assert_allclose(applied[0][0].sum(1), 1.0, atol=1e-6)
    # With meta steps (every 2 iterations: 3 of them in 8 steps) the networks move.
    moving = make_policy("mmkd", meta_freq=2)
    run_episode(MultiTeacherKDEnv(synthetic_config(**moving.env_overrides)), moving, seed=4)
    assert moving.meta_steps == 3


def test_weight_network_inputs(synthetic_config):
    env, policy = _bound(synthetic_config)
    batch = env.engine.batch
    b, m, c = env.batch_size, env.num_teachers, env.engine.num_classes
    inputs = logit_inputs(batch)
    assert inputs.shape == (b, c * (m + 1))
    torch.testing.assert_close(inputs[:, c:2 * c], batch.teacher_logits[1])
    torch.testing.assert_close(inputs[:, -c:], batch.student_logits.detach())
    gram = gram_rows(batch)
    assert gram.shape == (b, b * (m + 1))
    f = batch.teacher_feature_maps[0].reshape(b, -1)
    torch.testing.assert_close(gram[:, :b], f @ f.T)


def test_hard_buffer_fills_then_takes_misclassified_samples():
    buffer = HardBuffer(6, np.random.default_rng(0))
    x = torch.arange(4.0)[:, None]
    buffer.add(x, torch.zeros(4, dtype=torch.long), torch.arange(4), torch.ones(4))
    buffer.add(x + 4, torch.zeros(4, dtype=torch.long), torch.arange(4, 8), torch.ones(4))
    assert buffer.size == 6 and buffer.index.tolist() == [0, 1, 2, 3, 4, 5]   # full after 6 samples
    buffer.add(x + 10, torch.ones(4, dtype=torch.long), torch.arange(10, 14), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    stored = set(buffer.index.tolist())
    assert {11, 13} <= stored and not {10, 12} & stored and len(stored - {11, 13}) == 4
    xs, ys, idx = buffer.sample(6)
    assert sorted(idx.tolist()) == sorted(buffer.index.tolist())
    torch.testing.assert_close(xs[:, 0], torch.where(idx >= 10, idx.float(), idx.float()))


def test_an_interrupted_episode_resumes_bit_identically(synthetic_config, finish_episode, assert_same_episode):
    env, policy = _bound(synthetic_config, seed=3, meta_freq=2)
    for _ in range(3):
        env.step_weights(*policy.act())
    saved_env, saved_policy = copy.deepcopy(env.state_dict()), copy.deepcopy(policy.state_dict())
    straight, acc = finish_episode(env, policy)

    env2, policy2 = _bound(synthetic_config, seed=99, meta_freq=2)
    env2.load_state_dict(saved_env)
    policy2.load_state_dict(saved_policy)
    resumed, acc2 = finish_episode(env2, policy2)
    assert_same_episode(straight, acc, resumed, acc2, steps=5)


def test_single_teacher_and_unknown_option(synthetic_config):
    policy = make_policy("mmkd", meta_freq=2)
    env = MultiTeacherKDEnv(synthetic_config(teachers=["cnn=random"], **policy.env_overrides))
    result = run_episode(env, policy, seed=0)
    assert result.mean_w_logit == [1.0] and result.mean_w_feat == [1.0] and policy.meta_steps == 3
    with pytest.raises(ValueError, match="unknown option.*meta_fre"):
        make_policy("mmkd", meta_fre=3)
    with pytest.raises(ValueError, match="buffer_size: the hard buffer must hold at least one batch"):
        make_policy("mmkd", buffer_size=4).bind(env)
