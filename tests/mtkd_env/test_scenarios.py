"""The scenario suite: each scenario builds and runs, its settings compose with explicit fields,
and instance sets are disjoint, listed and drawn reproducibly from the seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import mtkd_env  # noqa: F401  (registers the gym ids)
from mtkd_env import EnvConfig
from mtkd_env.env import MultiTeacherKDEnv
from mtkd_env.runtime.errors import CheckpointError, ConfigError
from mtkd_env.scenarios import SCENARIOS, instance_sets, scenario_settings


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_builds_and_runs_a_short_episode(scenario_config, name):
    env = MultiTeacherKDEnv(scenario_config(name))
    m = env.config.pool_size or len(env.config.teachers)
    obs, info = env.reset(seed=0)
    assert env.num_teachers == m and obs.shape == env.observation_space.shape
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert np.isfinite(reward)
        if terminated or truncated:
            break
    assert steps == 4 and 0.0 <= info["final_test_acc"] <= 1.0


def test_scenario_values_start_and_explicit_fields_win():
    cfg = EnvConfig(scenario="specialists", epochs=2.0, student="tiny_cnn")
    assert cfg.teachers == scenario_settings("specialists")["teachers"] and cfg.dataset == "glyphs"
    assert cfg.epochs == 2.0 and cfg.student == "tiny_cnn"
    # round trip through a dict: every field is explicit there and keeps its value
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg
    # another scenario keeps the user's own choices and replaces the scenario's
    other = cfg.replace(scenario="redundant")
    assert other.teachers == scenario_settings("redundant")["teachers"] and other.student == "tiny_cnn"
    assert other.epochs == 2.0
    # gym.make passes the scenario as a keyword
    assert EnvConfig().replace(scenario="pools").pool_size == 3


def test_unknown_scenario_is_a_one_line_error_with_did_you_mean():
    with pytest.raises(ConfigError, match=r"scenario: unknown scenario 'specialist' \(did you mean 'specialists'\?\)"):
        EnvConfig(scenario="specialist")


def test_instance_sets_are_disjoint_cover_every_combination_and_depend_only_on_the_seed():
    train, test = instance_sets(7, 3, seed=0)
    assert len(train) + len(test) == 35 and len(test) == round(0.3 * 35)
    sets = lambda xs: {frozenset(x) for x in xs}  # noqa: E731
    assert not sets(train) & sets(test) and len(sets(train) | sets(test)) == 35
    assert all(len(set(x)) == 3 for x in train + test)
    assert instance_sets(7, 3, seed=0) == (train, test)
    assert instance_sets(7, 3, seed=1) != (train, test)
    with pytest.raises(ValueError, match="pool_size < the number of teachers"):
        instance_sets(3, 3)


def test_pools_draws_its_instance_from_the_episode_seed_and_reports_it(scenario_config):
    env = MultiTeacherKDEnv(scenario_config("pools"))
    drawn = []
    for seed in (0, 1, 2, 0):
        _, info = env.reset(seed=seed)
        key = info["instance"]
        assert key.startswith("train:") and info["pool"] == list(env.instances[int(key.split(":")[1])])
        assert info["teacher_names"] == [env.config.teachers[i] for i in info["pool"]]
        assert all(f"[{name}]" in " ".join(env.feature_names) for name in info["teacher_names"])
        drawn.append(key)
    assert drawn[0] == drawn[3]  # the same seed, the same instance
    _, info = env.reset(seed=5, options={"instance": 2})
    assert info["instance"] == "train:2"
    with pytest.raises(ValueError, match=r"options\['instance'\]: expected an integer in \[0, 25\)"):
        env.reset(seed=5, options={"instance": 99})


def test_the_test_set_and_a_fixed_instance(scenario_config):
    env = gym.make("MultiTeacherKD-v0", **scenario_config("pools", instance_set="test", instance=3).to_dict()).unwrapped
    for seed in (0, 7):
        _, info = env.reset(seed=seed)
        assert info["instance"] == "test:3"
    with pytest.raises(ConfigError, match="instance: the test instance set has 10 instances"):
        scenario_config("pools", instance_set="test", instance=10)
    with pytest.raises(ConfigError, match="instance: selects one instance of an instance set, which needs pool_size"):
        scenario_config("unreliable", instance=0)


def test_a_specialist_predicts_only_its_own_group(scenario_config):
    env = MultiTeacherKDEnv(scenario_config("specialists", teacher_epochs=20))
    groups = env.engine.class_groups
    for g, teacher in enumerate(env.engine.teachers):
        with torch.no_grad():
            pred = teacher.model(env.engine.test_x).logits.argmax(1)
        assert set(pred.tolist()) <= set(groups[g]), teacher.name


def test_near_copies_differ_and_bad_teacher_kinds_are_refused(scenario_config, tiny_config):
    env = MultiTeacherKDEnv(scenario_config("redundant"))
    a, b = env.engine.teachers[0].model, env.engine.teachers[1].model
    assert not torch.equal(next(a.parameters()), next(b.parameters()))
    with pytest.raises(CheckpointError, match="group specialists need a dataset with class groups"):
        MultiTeacherKDEnv(tiny_config(teachers=["mlp=group:0"]))
    with pytest.raises(CheckpointError, match="epoch 3 is not a checkpoint of the 3-epoch run"):
        MultiTeacherKDEnv(tiny_config(teachers=["mlp=epoch:3"]))
    with pytest.raises(CheckpointError, match="expected 'mlp=seed:N' with a non-negative integer N"):
        MultiTeacherKDEnv(tiny_config(teachers=["mlp=seed:x"]))


def test_an_epoch_checkpoint_is_the_same_run_stopped_early(tiny_config):
    env = MultiTeacherKDEnv(tiny_config(teachers=["mlp=epoch:1", "mlp"], teacher_epochs=3))
    early, final = (t.model for t in env.engine.teachers)
    assert not torch.equal(next(early.parameters()), next(final.parameters()))


def test_pools_state_round_trip_restores_the_saved_instance_pool(scenario_config):
    """A checkpoint of a pools episode loads into an env on another instance (whose teachers'
    projectors have other shapes) and continues bit-identically: the saved pool comes back first."""
    cfg = scenario_config("pools")
    a, b = MultiTeacherKDEnv(cfg), MultiTeacherKDEnv(cfg)
    a.reset(seed=0, options={"instance": 0})
    shapes = a.engine.teacher_feature_shapes
    other = next(i for i, pool in enumerate(a.instances)
                 if [a.engine._bank_feature_shapes[k] for k in pool] != shapes)
    b.reset(seed=1, options={"instance": other})
    action = np.full(a.action_space.shape, 0.3, dtype=np.float32)
    a.step(action)
    b.load_state_dict(a.state_dict())
    assert b.instance == 0 and b.engine.pool == a.engine.pool
    for _ in range(2):
        out_a, out_b = a.step(action), b.step(action)
        np.testing.assert_array_equal(out_a[0], out_b[0])
        assert out_a[1] == out_b[1]
