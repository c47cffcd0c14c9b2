"""Formula policies bound to a real env: weights, the agent interface, fairness of the comparison."""

from __future__ import annotations

import numpy as np
import pytest

from baselines import POLICIES, make_policy
from baselines import weights as W
from mtkd_env.episodes import run_episode
from mtkd_env.env import MultiTeacherKDEnv


@pytest.fixture
def make_env(synthetic_config):
    def make(policy=None, **overrides):
        cfg = synthetic_config(**overrides)
        if policy is not None:
            cfg = cfg.replace(**policy.env_overrides)
        return MultiTeacherKDEnv(cfg)

    return make


CHOICE = {"kind": "ramp", "a": [1.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0]}
"""The choice of the oracle policies (searched per scenario elsewhere) for the 3-teacher env here."""


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_acts_and_predicts_in_the_action_space(name, make_env):
    policy = make_policy(name, seed=0, **({"choice": CHOICE} if name in ("oracle", "best-constant") else {}))
    env = make_env(policy)
    obs, _ = env.reset(seed=3)
    policy.bind(env)
    w_logit, w_feat = policy.act()
    m = env.num_teachers
    assert w_logit.shape == ((env.batch_size, m) if policy.per_sample else (m,))
    assert (w_feat is None) == (name not in ("ca-mkd", "mmkd"))  # those two have separate feature weights
    if w_feat is not None:
        assert w_feat.shape == w_logit.shape
    if name != "no-kd":
        np.testing.assert_allclose(w_logit.sum(-1), 1.0, atol=1e-5)
    action, state = policy.predict(obs, deterministic=True)
    assert env.action_space.contains(action) and state is None
    _, _, _, _, info = env.step(action)
    assert info["step"] == 1


def test_policy_weights_are_the_weight_function_on_the_prepared_batch(make_env):
    policy = make_policy("ca-mkd", normalization="reference")
    env = make_env(policy)
    env.reset(seed=0)
    policy.bind(env)
    batch = env.engine.batch
    expected = W.ca_mkd(batch.teacher_logits, batch.y, batch.student_logits.detach(), normalization="reference")
    np.testing.assert_array_equal(policy.act()[0], expected.numpy())
    best = make_policy("best", env=make_env())
    best.env.reset(seed=0)
    assert best.act()[0].tolist() == np.eye(3)[int(np.argmax(best.env.teacher_val_acc))].tolist()


def test_predict_round_trips_under_linear_transform(make_env):
    policy = make_policy("ebkd")
    env = make_env(policy, action_transform="linear")
    obs, _ = env.reset(seed=1)
    policy.bind(env)
    w_logit, _ = policy.act()
    action, _ = policy.predict(obs)
    np.testing.assert_allclose(env.action_to_weights(action)[0], w_logit, atol=1e-6)


def test_per_sample_policy_refuses_teacher_granularity_and_bad_options(make_env):
    env = make_env()
    with pytest.raises(ValueError, match="needs an env with granularity='sample'"):
        make_policy("ebkd", env=env)
    with pytest.raises(ValueError, match="unknown option"):
        make_policy("aver", cap=0.5)
    with pytest.raises(ValueError, match="unknown formula policy 'nope'; known formula policies"):
        make_policy("nope")


def test_same_seed_same_students_across_granularities_and_no_kd_is_ce_only(make_env):
    """Fairness: a policy's env overrides change the interface, not the students or the data."""
    aver = make_policy("aver")
    a = run_episode(make_env(), aver, seed=5, eval_every=4)
    b = run_episode(make_env(granularity="sample"), aver, seed=5, eval_every=4)
    assert a.test_acc == b.test_acc and a.curve_val_acc == b.curve_val_acc
    assert a.curve_steps == [0, 4, 8] and a.weight_steps == [4, 8] and a.steps == 8
    np.testing.assert_allclose(a.mean_w_logit, [1 / 3] * 3, atol=1e-6)
    # Same initial student for every policy (step-0 validation accuracy), different training after.
    ebkd = make_policy("ebkd")
    c = run_episode(make_env(ebkd), ebkd, seed=5, eval_every=4)
    assert c.curve_val_acc[0] == a.curve_val_acc[0]
    # no-kd: with alpha = beta = 0 the teacher weights cannot matter (CE only): random weights
    # give the same student as no-kd's zero weights.
    no_kd = make_policy("no-kd")
    d = run_episode(make_env(no_kd), no_kd, seed=5, eval_every=4)
    plain = make_env(kd_alpha=0.0, feat_beta=0.0)
    plain.reset(seed=5)
    rng = np.random.default_rng(0)
    while True:
        *_, terminated, _, info = plain.step_weights(rng.dirichlet(np.ones(3)).astype(np.float32))
        if terminated:
            break
    assert d.test_acc == info["final_test_acc"] and d.mean_w_logit == [0.0, 0.0, 0.0]
    assert d.test_acc != a.test_acc or d.curve_val_acc != a.curve_val_acc


def test_random_policy_is_reproducible_from_its_seed(make_env):
    runs = [run_episode(make_env(), make_policy("random"), seed=s, eval_every=8) for s in (2, 2, 3)]
    assert runs[0].window_w_logit == runs[1].window_w_logit and runs[0].test_acc == runs[1].test_acc
    assert runs[0].window_w_logit != runs[2].window_w_logit


def test_aekd_policy_uses_env_temperature(make_env):
    policy = make_policy("aekd", env=make_env(kd_temperature=2.0))
    policy.env.reset(seed=0)
    batch = policy.env.engine.batch
    expected = W.aekd(batch.teacher_logits, batch.y, batch.student_logits.detach(), temperature=2.0)[0]
    np.testing.assert_allclose(policy.act()[0], expected.numpy(), atol=1e-7)
    assert policy.function_kwargs() == {"temperature": 2.0}
    assert make_policy("aekd", env=policy.env, cap=0.5).function_kwargs() == {"temperature": 2.0, "cap": 0.5}
