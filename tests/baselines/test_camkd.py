"""CA-MKD's feature weights: the confidence formula on each teacher's own classifier head applied to
the projected student map, checked by hand on tiny models whose heads are plain linear layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtkd_env.episodes import run_episode
from baselines.policies import make_policy
from mtkd_env.env import MultiTeacherKDEnv


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _hand_feature_weights(env, normalization: str) -> np.ndarray:
    """(B, M) by hand: numpy GAP / flatten and the teachers' fc matrices, CE, confidence formula."""
    batch, eng = env.engine.batch, env.engine
    y = batch.y.numpy()
    ces = []
    for teacher, proj in zip(eng.teachers, batch.projected):
        fc = teacher.model.fc
        w, b = fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy()
        p = proj.double().numpy()
        pooled = p.reshape(len(p), -1) if teacher.name.startswith("mlp") else p.mean(axis=(2, 3))
        z = pooled @ w.T + b                                        # (B, C)
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        ces.append(-logp[np.arange(len(y)), y])
    ce = np.stack(ces, axis=1)                                      # (B, M)
    m = ce.shape[1]
    weights = (1.0 - _softmax(ce, 1)) / (m - 1)
    return weights if normalization == "sum_to_one" else weights / m


@pytest.mark.parametrize("normalization", ["sum_to_one", "reference"])
def test_feature_weights_equal_a_hand_computation(synthetic_config, normalization):
    policy = make_policy("ca-mkd", normalization=normalization)
    env = MultiTeacherKDEnv(synthetic_config(**policy.env_overrides))
    env.reset(seed=0)
    policy.bind(env)
    for _ in range(3):  # a few steps so the projectors are no longer at their initialisation
        env.step_weights(*policy.act())
    w_logit, w_feat = policy.act()
    np.testing.assert_allclose(w_feat, _hand_feature_weights(env, normalization), rtol=1e-5, atol=1e-6)
    total = 1.0 if normalization == "sum_to_one" else 1 / 3
    np.testing.assert_allclose(w_feat.sum(1), total, atol=1e-5)
    assert not np.allclose(w_feat, w_logit)  # a different confidence than the teachers' own
    _, _, _, _, info = env.step_weights(w_logit, w_feat)
    np.testing.assert_array_equal(info["weights_feat"], w_feat)


def test_without_feature_kd_the_feature_weights_are_the_logit_weights(synthetic_config):
    policy = make_policy("ca-mkd")
    env = MultiTeacherKDEnv(synthetic_config(feature_kd=False, **policy.env_overrides))
    env.reset(seed=0)
    policy.bind(env)
    assert policy.act()[1] is None


def test_single_teacher_episode(synthetic_config):
    policy = make_policy("ca-mkd")
    env = MultiTeacherKDEnv(synthetic_config(teachers=["cnn=random"], **policy.env_overrides))
    result = run_episode(env, policy, seed=0, eval_every=4)
    assert result.steps == 8 and np.isfinite(result.test_acc)
    assert result.mean_w_logit == [1.0] and result.mean_w_feat == [1.0]


def test_env_without_kept_feature_maps_is_refused(synthetic_config):
    env = MultiTeacherKDEnv(synthetic_config(granularity="sample"))
    env.reset(seed=0)
    policy = make_policy("ca-mkd")
    with pytest.raises(ValueError, match="keep_feature_maps=True"):
        policy.bind(env)
    with torch.no_grad():
        assert env.engine.batch.projected is None


def test_distributed_path_gathers_the_feature_inputs(synthetic_config):
    """`FormulaPolicy.weights` under torch.distributed gathers `feature_logits` rows; with one rank
    (identity gather) it must give exactly the single-process weights."""
    from types import SimpleNamespace

    policy = make_policy("ca-mkd")
    env = MultiTeacherKDEnv(synthetic_config(**policy.env_overrides))
    env.reset(seed=2)
    policy.bind(env)
    single = policy.act()
    env.dist = SimpleNamespace(enabled=True, gather_rows=lambda t: t)
    gathered = policy.weights(env)
    np.testing.assert_array_equal(gathered[0], single[0])
    np.testing.assert_array_equal(gathered[1], single[1])


def test_an_interrupted_episode_resumes_bit_identically(synthetic_config, finish_episode, assert_same_episode):
    """CA-MKD is stateless: the env's episode state is all there is to resume."""
    import copy

    policy = make_policy("ca-mkd")
    env = MultiTeacherKDEnv(synthetic_config(**policy.env_overrides))

    env.reset(seed=5)
    policy.bind(env)
    for _ in range(3):
        env.step_weights(*policy.act())
    saved = copy.deepcopy(env.state_dict())
    straight, acc = finish_episode(env, policy)
    env.reset(seed=77)
    env.load_state_dict(saved)
    resumed, acc2 = finish_episode(env, policy)
    assert_same_episode(straight, acc, resumed, acc2, steps=5)
