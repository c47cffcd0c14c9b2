"""The lockstep twin student and the long-horizon rewards (terminal and paired potential)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.mdp.rewards import REWARDS, make_reward

DROP = np.array([0.5, 0.5, 0.0], dtype=np.float32)
TWIN_REWARDS = ["twin_val_acc", "twin_val_loss", "twin_probe_loss", "twin_final_val_acc"]


def _episode(env, weights, seed=0):
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    while True:
        obs, reward, terminated, truncated, info = env.step_weights(weights)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            return np.array(observations), np.array(rewards), info


def _params(module):
    return [t.detach().clone() for t in module.state_dict().values()]


def test_twin_starts_as_the_student_and_sees_the_same_batches(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(reward="twin_val_acc"))
    env.reset(seed=3)
    eng = env.engine
    assert eng.has_twin and eng.twin.student is not eng.student
    assert all(torch.equal(a, b) for a, b in zip(_params(eng.student), _params(eng.twin.student)))
    assert all(torch.equal(a, b) for a, b in zip(_params(eng.projectors), _params(eng.twin.projectors)))
    for _ in range(3):
        assert eng.twin_batch.x is eng.batch.x and torch.equal(eng.twin_batch.index, eng.batch.index)
        assert torch.equal(eng.twin_batch.teacher_logits, eng.batch.teacher_logits)
        env.step_weights(DROP)


def test_twin_trains_exactly_as_an_aver_run_and_leaves_the_agent_unchanged(synthetic_config):
    twin_env = MultiTeacherKDEnv(synthetic_config(reward="twin_val_loss"))
    plain = MultiTeacherKDEnv(synthetic_config())
    obs_twin, _, info_twin = _episode(twin_env, DROP, seed=5)
    obs_plain, _, info_plain = _episode(plain, DROP, seed=5)
    # The agent's student: the same trajectory with or without a twin.
    assert np.array_equal(obs_twin, obs_plain)
    assert all(torch.equal(a, b) for a, b in zip(_params(twin_env.engine.student), _params(plain.engine.student)))
    assert info_twin["final_test_acc"] == info_plain["final_test_acc"]
    # The twin: exactly the student an AVER episode with the same seed trains.
    _, _, info_aver = _episode(plain, np.full(3, 1 / 3, dtype=np.float32), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(_params(twin_env.engine.twin.student), _params(plain.engine.student)))
    assert info_twin["twin_final_val_acc"] == info_aver["final_val_acc"]
    assert info_twin["twin_final_test_acc"] == info_aver["final_test_acc"]


@pytest.mark.parametrize("granularity", ["teacher", "sample"])
@pytest.mark.parametrize("reward", TWIN_REWARDS)
def test_twin_return_is_the_final_advantage(reward, granularity, synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(reward=reward, granularity=granularity, reward_interval=3,
                                             max_steps=10))
    _, rewards, info = _episode(env, DROP, seed=1)
    assert rewards.sum() == pytest.approx(info["twin_advantage"], abs=1e-6)
    if reward in ("twin_val_acc", "twin_final_val_acc"):
        assert rewards.sum() == pytest.approx(info["final_val_acc"] - info["twin_final_val_acc"], abs=1e-6)
    if reward == "twin_final_val_acc":
        assert np.all(rewards[:-1] == 0)
    if reward == "twin_val_acc":
        assert np.count_nonzero(rewards[[i for i in range(10) if (i + 1) % 3 and i != 9]]) == 0
    # Equal weights are the twin's own: every paired reward is exactly 0.
    _, rewards, _ = _episode(env, np.full(3, 1 / 3, dtype=np.float32), seed=1)
    assert np.all(rewards == 0)


def test_terminal_rewards_pay_only_at_the_end(synthetic_config):
    for reward, key, sign in (("final_val_acc", "final_val_acc", 1.0), ("final_val_loss", None, -1.0)):
        env = MultiTeacherKDEnv(synthetic_config(reward=reward))
        _, rewards, info = _episode(env, DROP)
        assert np.all(rewards[:-1] == 0)
        if key:
            assert rewards[-1] == pytest.approx(info[key])
        else:
            assert rewards[-1] < 0


def test_logged_rewards_match_the_same_reward_as_primary(synthetic_config):
    names = ["probe_loss_drop", "twin_val_acc", "final_val_loss"]
    logged = MultiTeacherKDEnv(synthetic_config(reward="neg_loss", log_rewards=names, reward_interval=2))
    logged.reset(seed=2)
    per_name = {n: [] for n in names}
    while True:
        _, _, term, _, info = logged.step_weights(DROP)
        for n in names:
            per_name[n].append(info["rewards"][n])
        if term:
            break
    for n in names:
        _, rewards, _ = _episode(MultiTeacherKDEnv(synthetic_config(reward=n, reward_interval=2)), DROP, seed=2)
        assert np.allclose(per_name[n], rewards, atol=1e-7), n


@pytest.mark.parametrize("reward", ["probe_loss_drop", "twin_val_loss"])
def test_a_fork_reproduces_the_unforked_trajectory(reward, synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(reward=reward, reward_interval=2, max_steps=10))
    env.reset(seed=4)
    for _ in range(3):
        env.step_weights(DROP)
    state = env.state_dict()
    tail = [env.step_weights(DROP)[:2] for _ in range(5)]
    env.load_state_dict(state)
    again = [env.step_weights(DROP)[:2] for _ in range(5)]
    for (obs_a, r_a), (obs_b, r_b) in zip(tail, again):
        assert np.array_equal(obs_a, obs_b) and r_a == r_b


def test_state_without_twin_is_refused_by_a_twin_engine(synthetic_config):
    plain = MultiTeacherKDEnv(synthetic_config())
    plain.reset(seed=0)
    twin = MultiTeacherKDEnv(synthetic_config(reward="twin_val_acc"))
    twin.reset(seed=0)
    with pytest.raises(ValueError, match="twin"):
        twin.load_state_dict(plain.state_dict())


def test_unknown_reward_suggests_a_close_name():
    with pytest.raises(ValueError, match="did you mean 'twin_val_acc'"):
        make_reward("twin_val_ac", "teacher")
    assert {"final_val_acc", "final_val_loss", "twin_val_acc", "twin_val_loss", "twin_probe_loss",
            "twin_final_val_acc"} <= set(REWARDS)
