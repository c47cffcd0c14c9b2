"""The MTKD-RL agents: weights equal the official formula, M = 1 is finite, the PG update learns a
bandit, the code update drifts toward uniform, and the warm-up uses equal weights until the first update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.mtkd_rl import MTKDRL, MTKDRLConfig, PolicyTrans, StateLayout, weights_to_linear_action
from agents.mtkd_rl_network import priors
from mtkd_env.config import ConfigError


def _layout(m: int, extra: int = 2) -> StateLayout:
    """Per teacher [cos, kl, ce, extra features] as in the env's sample layout."""
    width = 3 + extra
    return StateLayout(m, m * width, tuple(i * width for i in range(m)), tuple(i * width + 1 for i in range(m)),
                       tuple(i * width + 2 for i in range(m)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _hand_built(m: int, b: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    layout = _layout(m)
    state = rng.normal(size=(b, layout.width)).astype(np.float32)
    cos = rng.uniform(0, 1, (b, m))
    kl = rng.uniform(0, 5, (b, m))
    ce = rng.uniform(0, 3, (b, m))
    for i in range(m):
        state[:, layout.cos[i]], state[:, layout.kl[i]], state[:, layout.ce[i]] = cos[:, i], kl[:, i], ce[:, i]
    return layout, state, cos, kl, ce


def _fixed_heads(net: PolicyTrans, pi_l: np.ndarray, pi_f: np.ndarray) -> None:
    """Zero hidden layer, so the heads output softmax(bias) = the given distributions."""
    with torch.no_grad():
        net.embed.weight.zero_()
        net.logit_head.weight.zero_()
        net.feature_head.weight.zero_()
        net.logit_head.bias.copy_(torch.tensor(np.log(pi_l)))
        net.feature_head.bias.copy_(torch.tensor(np.log(pi_f)))


@pytest.mark.parametrize("dynamic", [False, True])
def test_weights_equal_the_official_formula(dynamic):
    m = 3
    layout, state, cos, kl, ce = _hand_built(m)
    pi_l, pi_f = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.3, 0.1])
    net = PolicyTrans(layout, hidden_size=8, dynamic=dynamic)
    _fixed_heads(net, pi_l, pi_f)
    a, b = np.array([0.5, 1.0, -1.0]), np.array([2.0, 0.0, 0.3])
    if dynamic:
        with torch.no_grad():
            net.logit_mix.copy_(torch.tensor(a))
            net.feature_mix.copy_(torch.tensor(b))
    w_l, w_f = (w.detach().numpy() for w in net(torch.tensor(state)))

    q_ce = (1 - _softmax(ce)) / (m - 1)
    q_kl, q_cos = _softmax(kl), _softmax(cos)
    alpha, gamma = (_softmax(a), _softmax(b)) if dynamic else (np.full(3, 1 / 3), np.full(3, 1 / 3))
    expect_l = alpha[0] * pi_l + alpha[1] * q_ce + alpha[2] * q_kl
    expect_f = gamma[0] * pi_f + gamma[1] * q_ce + gamma[2] * q_cos
    np.testing.assert_allclose(w_l, expect_l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_f, expect_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_l.sum(1), 1.0, atol=1e-5)
    # The agent's action maps back to exactly these weights through the env's "linear" transform.
    action = weights_to_linear_action(w_l, w_f)
    shifted = action + 1.0
    np.testing.assert_allclose(shifted[:, :m] / shifted[:, :m].sum(1, keepdims=True), w_l, atol=1e-6)
    np.testing.assert_allclose(shifted[:, m:] / shifted[:, m:].sum(1, keepdims=True), w_f, atol=1e-6)


@pytest.mark.parametrize("variant", ["code", "pg"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_single_teacher_is_finite(variant, dynamic):
    layout, state, *_ = _hand_built(1)
    agent = MTKDRL(variant=variant, config=MTKDRLConfig(hidden_size=8, dynamic=dynamic, warmup=False), layout=layout)
    for q in priors(*(torch.tensor(state[:, [c]]) for c in (layout.ce[0], layout.kl[0], layout.cos[0]))):
        assert torch.equal(q, torch.ones_like(q))
    w_l, w_f = agent.weights(state, deterministic=False)
    np.testing.assert_allclose(w_l, 1.0, atol=1e-6)
    np.testing.assert_allclose(w_f, 1.0, atol=1e-6)
    batch = {"state": torch.tensor(state), "reward": torch.rand(len(state))}
    if variant == "pg":
        batch["a_logit"], batch["a_feat"] = torch.tensor(w_l), torch.tensor(w_f)
    stats = agent.update([batch] * 3)
    assert np.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    action, _ = agent.predict(state)
    assert action.shape == (len(state), 2) and np.all(action == 1.0)


def test_pg_update_raises_probability_of_rewarded_action():
    """Two-teacher bandit: reward 1 when the sampled logit weight of teacher 0 exceeds 1/2."""
    layout, state, *_ = _hand_built(2, b=64, seed=1)
    agent = MTKDRL(variant="pg", config=MTKDRLConfig(hidden_size=16, lr=0.05, concentration=10.0, warmup=False),
                   layout=layout, seed=3)
    x = torch.tensor(state)

    def prob_rewarded() -> float:
        (d_l, _), _ = agent.net.distributions(x)
        samples = d_l.sample((200,))                     # (200, B, 2)
        return float((samples[..., 0] > 0.5).float().mean())

    before = prob_rewarded()
    for _ in range(40):
        w_l, w_f = agent.weights(state, deterministic=False)
        reward = (w_l[:, 0] > 0.5).astype(np.float32)
        agent.update([{"state": x, "reward": torch.tensor(reward), "a_logit": torch.tensor(w_l),
                       "a_feat": torch.tensor(w_f)}])
    after = prob_rewarded()
    assert after > before + 0.2, (before, after)


def test_code_update_pushes_weights_toward_uniform():
    """The official reward-weighted BCE against 1 maximises sum log w: the uniform vector (issue #2)."""
    layout, state, *_ = _hand_built(3, b=32, seed=2)
    agent = MTKDRL(variant="code", config=MTKDRLConfig(hidden_size=16, lr=0.1, dynamic=True), layout=layout, seed=0)
    x = torch.tensor(state)
    gap = lambda: float((agent.net(x)[0].detach() - 1 / 3).abs().mean())  # noqa: E731
    before = gap()
    agent.update([{"state": x, "reward": torch.ones(len(x))}] * 200)
    assert gap() < 0.5 * before


class _Infos(BaseCallback):
    def __init__(self):
        super().__init__()
        self.infos = []

    def _on_step(self) -> bool:
        self.infos.append(self.locals["infos"][0])
        return True


@pytest.mark.parametrize("warmup_weight, value", [("uniform", 1 / 3), ("ones", 1.0)])
def test_warmup_until_first_update_then_agent_weights(synthetic_config, warmup_weight, value):
    from mtkd_env.env import MultiTeacherKDEnv

    from agents.mtkd_rl import ENV_OVERRIDES

    env = MultiTeacherKDEnv(synthetic_config(max_steps=16, **ENV_OVERRIDES))  # 8 batches per epoch
    agent = MTKDRL(env, "code", MTKDRLConfig(warmup_weight=warmup_weight), seed=0)
    cb = _Infos()
    agent.learn(16, callback=cb)
    weights = np.stack([np.broadcast_to(i["weights_logit"], (16, 3)) for i in cb.infos])
    assert np.all(weights[:8] == np.float32(value))            # epoch 0: warm-up weights
    assert not np.allclose(weights[8:], weights[8, 0, 0])       # afterwards the agent's own, per sample
    np.testing.assert_allclose(weights[8:].sum(-1), 1.0, atol=1e-5)
    assert agent._n_rounds == 2 and agent._n_updates == 16    # one SGD step per buffered batch, per epoch
    assert "reward_vector" in cb.infos[0]


def test_pg_precision_has_a_floor_so_the_dirichlet_stays_valid():
    """A learned log-precision that ran far negative (exp underflows to 0, as a `specialists` run did)
    still gives valid Dirichlets of precision min_concentration * M, and an update from them is finite."""
    layout, state, *_ = _hand_built(4, b=16, seed=2)
    agent = MTKDRL(variant="pg", config=MTKDRLConfig(hidden_size=8, warmup=False, min_concentration=1.5),
                   layout=layout, seed=0)
    with torch.no_grad():
        agent.net.log_concentration.fill_(-200.0)
    assert float(agent.net.concentration.detach()) == 0.0
    (d_l, d_f), (w_l, _) = agent.net.distributions(torch.tensor(state), agent.config.min_weight,
                                                   agent.config.min_concentration)
    torch.testing.assert_close(d_l.concentration.sum(-1), torch.full((16,), 1.5 * 4), rtol=1e-5, atol=1e-4)
    a_l, a_f = d_l.sample(), d_f.sample()
    stats = agent.update([{"state": torch.tensor(state), "reward": torch.linspace(0, 1, 16), "a_logit": a_l,
                           "a_feat": a_f}])
    assert np.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())


def test_pg_precision_has_a_ceiling_so_a_runaway_kappa_stays_finite():
    """A learned log-precision far up (REINFORCE ran one from 7 to 19 in four updates on `pools`, then
    NaN) is capped at max_concentration * M; its gradient is then 0, so updates stay finite."""
    layout, state, *_ = _hand_built(3, b=16, seed=3)
    agent = MTKDRL(variant="pg", config=MTKDRLConfig(hidden_size=8, warmup=False, max_concentration=50.0),
                   layout=layout, seed=0)
    with torch.no_grad():
        agent.net.log_concentration.fill_(40.0)
    (d_l, _), _ = agent.net.distributions(torch.tensor(state), agent.config.min_weight,
                                          agent.config.min_concentration, agent.config.max_concentration)
    torch.testing.assert_close(d_l.concentration.sum(-1), torch.full((16,), 50.0 * 3), rtol=1e-4, atol=1e-3)
    for _ in range(3):
        (d_l, d_f), _ = agent.net.distributions(torch.tensor(state), agent.config.min_weight,
                                                agent.config.min_concentration, agent.config.max_concentration)
        stats = agent.update([{"state": torch.tensor(state), "reward": torch.linspace(0, 1, 16),
                               "a_logit": d_l.sample(), "a_feat": d_f.sample()}])
        assert np.isfinite(stats["loss"]) and stats["concentration"] == pytest.approx(50.0 * 3)  # what it uses
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    assert float(agent.net.log_concentration.detach()) == 40.0  # no gradient through the ceiling


def test_pg_precision_ceiling_below_the_floor_is_a_config_error():
    layout, *_ = _hand_built(3, b=4, seed=0)
    with pytest.raises(ConfigError, match="max_concentration: expected more than min_concentration"):
        MTKDRL(variant="pg", config=MTKDRLConfig(min_concentration=2.0, max_concentration=1.0), layout=layout)
