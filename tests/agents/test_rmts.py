"""Reinforced Multi-Teacher Selection: probabilities and the REINFORCE update on hand-built inputs,
the env's selection transform (none selected = CE only), short runs, M = 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.rmts import ENV_OVERRIDES, RMTS, RMTSConfig, SelectionLayout
from mtkd_env.env import MultiTeacherKDEnv

D_S, C = 3, 4


def _layout(m: int) -> SelectionLayout:
    """Per teacher [ce, logits (C)], then the student embedding (D_S): like the env's layout."""
    width = m * (1 + C) + D_S
    return SelectionLayout(m, width, (m * (1 + C), width), tuple((i * (1 + C) + 1, (i + 1) * (1 + C)) for i in range(m)),
                           tuple(i * (1 + C) for i in range(m)))


def _softmax(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(x / t - (x / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _hand_state(m: int, b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lay = _layout(m)
    obs = rng.normal(size=(b, lay.width)).astype(np.float32)
    for c in lay.ce:
        obs[:, c] = rng.uniform(0, 3, b)
    s = np.stack([np.concatenate([obs[:, lay.student[0]:lay.student[1]], _softmax(obs[:, a:z], 2.0),
                                  obs[:, c:c + 1]], 1) for (a, z), c in zip(lay.logits, lay.ce)], 1)   # (B, M, D+C+1)
    return lay, obs, s.astype(np.float64)


def _set(agent: RMTS, w: np.ndarray, bias: float) -> None:
    with torch.no_grad():
        agent.net.linear.weight.copy_(torch.tensor(w[None], dtype=torch.float32))
        agent.net.linear.bias.fill_(bias)


def test_selection_probabilities_equal_the_formula():
    lay, obs, s = _hand_state(3, 5)
    agent = RMTS(config=RMTSConfig(temperature=2.0), layout=lay)
    np.testing.assert_allclose(agent.probabilities(obs), 0.5)  # W = 0, b = 0 at the start
    w = np.random.default_rng(1).normal(size=lay.state_width)
    _set(agent, w, -0.3)
    expected = 1.0 / (1.0 + np.exp(-(s @ w - 0.3)))
    np.testing.assert_allclose(agent.probabilities(obs), expected, rtol=1e-5)
    action, _ = agent.predict(obs)
    np.testing.assert_array_equal(action, np.where(expected >= 0.5, 1.0, -1.0))


def test_reinforce_update_equals_the_hand_gradient():
    lay, obs, s = _hand_state(2, 6, seed=2)
    lr = 0.1
    agent = RMTS(config=RMTSConfig(lr=lr, optimizer="sgd", temperature=2.0, baseline_decay=0.5), layout=lay)
    w0 = np.random.default_rng(3).normal(size=lay.state_width) * 0.3
    _set(agent, w0, 0.1)
    p = 1.0 / (1.0 + np.exp(-(s @ w0 + 0.1)))
    a = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    r1, r2 = np.linspace(-1, 1, 6).astype(np.float32), np.full(6, 0.5, np.float32)
    batch = lambda r: {"state": torch.tensor(obs), "selected": torch.tensor(a), "reward": torch.tensor(r)}  # noqa: E731
    agent.update([batch(r1), batch(r2)])
    # Baselines: the first reward's mean (0), then 0.5 * 0 + 0.5 * mean(r1) = 0 for the second step.
    grad_w, grad_b = np.zeros_like(w0), 0.0
    for r, base in ((r1, 0.0), (r2, 0.0)):
        coef = -(r - base)[:, None] * (a - p) / a.size / 2        # d loss / d logit, mean over steps
        grad_w += np.einsum("bm,bmf->f", coef, s)
        grad_b += coef.sum()
    np.testing.assert_allclose(agent.net.linear.weight.detach().numpy()[0], w0 - lr * grad_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(agent.net.linear.bias.detach()), 0.1 - lr * grad_b, rtol=1e-4, atol=1e-6)
    assert agent._baseline == pytest.approx(0.25)  # 0.5 * 0 + 0.5 * mean(r2)


def test_reinforce_learns_to_select_low_loss_teachers():
    """Reward per sample: +1 for each selected teacher whose CE is below 1.5, -1 for each other
    selected one. W and b are shared by the teachers, so the policy must learn it from the CE."""
    lay, obs, _ = _hand_state(2, 64, seed=4)
    ce = obs[:, list(lay.ce)]
    good = torch.tensor(ce < 1.5, dtype=torch.float32)
    agent = RMTS(config=RMTSConfig(lr=0.05), layout=lay, seed=0)
    for _ in range(100):
        a = torch.bernoulli(torch.tensor(agent.probabilities(obs)))
        reward = (a * (2 * good - 1)).sum(1)
        agent.update([{"state": torch.tensor(obs), "selected": a, "reward": reward}])
    p = agent.probabilities(obs)
    assert p[ce < 1.5].mean() > 0.8 and p[ce >= 1.5].mean() < 0.2, (p[ce < 1.5].mean(), p[ce >= 1.5].mean())


def test_selection_transform_and_state_in_the_env(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(**ENV_OVERRIDES))
    obs, _ = env.reset(seed=0)
    lay = SelectionLayout.from_env_layout(env.sample_layout)
    batch = env.engine.batch
    np.testing.assert_allclose(obs[:, lay.student[0]:lay.student[1]], batch.student_embedding.numpy(), rtol=1e-6)
    np.testing.assert_allclose(obs[:, lay.logits[2][0]:lay.logits[2][1]], batch.teacher_logits[2].numpy(), rtol=1e-6)
    action = np.ones((env.batch_size, 3), np.float32)
    action[0] = [1, -1, -1]
    action[1] = [-1, -1, -1]          # no teacher: CE only for this sample
    action[2] = [1, 1, -1]
    w_logit, w_feat = env.action_to_weights(action)
    np.testing.assert_array_equal(w_logit[:3], [[1, 0, 0], [0, 0, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(w_logit[3:], 1 / 3)
    assert np.array_equal(w_feat, w_logit)
    np.testing.assert_array_equal(env.weights_to_action(w_logit), np.where(w_logit > 0, 1.0, -1.0))
    total, _, _ = env.engine.loss_terms(batch, torch.tensor(w_logit), torch.tensor(w_feat))
    assert float(total[1].detach()) == pytest.approx(float(batch.student_ce[1].detach()))
    _, _, _, _, info = env.step(action)
    np.testing.assert_array_equal(info["weights_logit"], w_logit)


@pytest.mark.parametrize("teachers", [["mlp", "cnn=random", "mlp=noisy"], ["cnn=random"]])
def test_short_training_and_greedy_policy(synthetic_config, teachers):
    env = MultiTeacherKDEnv(synthetic_config(teachers=teachers, reward="probe_loss_drop", **ENV_OVERRIDES))
    agent = RMTS(env, RMTSConfig(update_every=2), seed=0)
    agent.learn(10)
    assert agent.num_timesteps == 10 and agent._n_updates == 5
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    obs = env.current_observation()
    action, _ = agent.predict(obs)
    assert action.shape == (env.batch_size, len(teachers)) and set(np.unique(action)) <= {-1.0, 1.0}


def test_wrong_env_is_a_clear_error(synthetic_config):
    from mtkd_env.config import ConfigError

    env = MultiTeacherKDEnv(synthetic_config(granularity="sample"))
    with pytest.raises(ConfigError, match="rmts needs an env with"):
        RMTS(env)
