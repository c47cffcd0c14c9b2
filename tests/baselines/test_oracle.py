"""Scenario oracles: the candidate grid, the weights of each kind of choice, and the cached search."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import baselines.oracle as oracle
from baselines.oracle import candidates, load_or_search, main, oracle_path
from baselines.policies import choice_weights, make_policy
from mtkd_env.runtime.errors import ConfigError


def test_the_candidate_grid_of_each_kind():
    unreliable = candidates("unreliable", 3)
    assert len(unreliable) == 7 and all(c["kind"] == "constant" for c in unreliable)
    assert {tuple(c["w"]) for c in unreliable} >= {(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (1 / 3, 1 / 3, 1 / 3)}
    specialists = candidates("specialists", 4)
    assert len(specialists) == 4 + 1 + 4 + 6 + 1 and specialists[-1] == {"kind": "route", "teacher_groups": [0, 1, 2, 3]}
    schedule = candidates("schedule", 2)
    assert len(schedule) == 3 + 2 * 4  # e_0, e_1, uniform; per ordered pair three switches and a ramp
    for c in candidates("redundant", 4):
        assert c["kind"] == "constant" and abs(sum(c["w"]) - 1) < 1e-9


def _fake_env(iteration=0, total=10, y=(0, 6, 12), instance=None):
    engine = SimpleNamespace(iteration=iteration, total_iterations=total, num_classes=15,
                             class_groups=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]],
                             batch=SimpleNamespace(y=torch.tensor(y)))
    return SimpleNamespace(engine=engine, config=SimpleNamespace(instance_set="test"), instance=instance)


def test_choice_weights_of_each_kind():
    route = choice_weights({"kind": "route", "teacher_groups": [2, 0, 1]}, _fake_env(y=(0, 6, 12, 3)))
    np.testing.assert_array_equal(route, [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    switch = {"kind": "switch", "a": [1, 0], "b": [0, 1], "at": 0.5}
    np.testing.assert_array_equal(choice_weights(switch, _fake_env(iteration=4)), [1, 0])
    np.testing.assert_array_equal(choice_weights(switch, _fake_env(iteration=5)), [0, 1])
    ramp = choice_weights({"kind": "ramp", "a": [1, 0], "b": [0, 1]}, _fake_env(iteration=3))
    np.testing.assert_allclose(ramp, [0.7, 0.3], rtol=1e-6)
    by_instance = {"kind": "instance", "by_instance": {"test:1": [0.0, 1.0, 0.0]}}
    np.testing.assert_array_equal(choice_weights(by_instance, _fake_env(instance=1)), [0, 1, 0])
    with pytest.raises(ValueError, match="no weights for instance 'test:2'"):
        choice_weights(by_instance, _fake_env(instance=2))


def test_the_oracle_policy_needs_its_choice():
    with pytest.raises(ConfigError, match="policy 'oracle': needs its choice"):
        make_policy("oracle")
    assert make_policy("oracle", choice={"kind": "route", "teacher_groups": [0]}).env_overrides == {"granularity": "sample"}


def test_search_picks_the_best_validation_candidate_and_is_cached(scenario_config, tmp_path, monkeypatch):
    config = scenario_config("schedule")
    result = load_or_search(config, seeds=[2000], progress=False, cache_dir=str(tmp_path))
    ranked = result["candidates"]
    assert len(ranked) == 11 and result["choice"] == ranked[0]["choice"]
    assert ranked[0]["mean_val_acc"] == max(r["mean_val_acc"] for r in ranked)
    assert result["best_constant"]["kind"] == "constant"
    path = oracle_path(config, [2000], str(tmp_path))
    assert json.loads(path.read_text())["choice"] == result["choice"]

    def no_search(*args, **kwargs):
        raise AssertionError("the cached oracle must be read, not searched again")

    monkeypatch.setattr(oracle, "search", no_search)
    assert load_or_search(config, seeds=[2000], progress=False, cache_dir=str(tmp_path)) == \
        json.loads(path.read_text())
    # settings that change training change the key; how it runs (device, progress) does not
    assert oracle_path(config.replace(lr=0.01), [2000], str(tmp_path)) != path
    assert oracle_path(config.replace(show_progress=True), [2000], str(tmp_path)) == path


def test_the_instance_oracle_has_weights_for_every_test_instance(scenario_config, tmp_path):
    result = load_or_search(scenario_config("pools", max_steps=2), seeds=[2000], progress=False,
                            cache_dir=str(tmp_path))
    assert sorted(result["choice"]["by_instance"]) == sorted(f"test:{i}" for i in range(10))


def test_cli_bad_input_is_one_line(capsys):
    assert main(["--scenarios", "specialist"]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'specialist' (did you mean 'specialists'?)" in err and err.count("\n") == 1


def test_compare_reads_the_oracle_of_its_oracle_seeds(scenario_config, tmp_path, monkeypatch):
    from baselines.compare.options import CompareOptions
    from baselines.compare.outdir import settings_of
    from baselines.compare.resolve import formula_options

    assert CompareOptions(out=str(tmp_path)).oracle_seeds == list(oracle.SEARCH_SEEDS)
    config = scenario_config("schedule")
    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path / "cache"))
    searched = load_or_search(config, seeds=[2003], progress=False)

    def no_search(*args, **kwargs):
        raise AssertionError("compare must read the cached search of --oracle-seeds")

    monkeypatch.setattr(oracle, "search", no_search)
    opts = CompareOptions(out=str(tmp_path / "out"), env_config=config, oracle_seeds=[2003], progress=False)
    assert formula_options("oracle", opts) == {"choice": searched["choice"]}
    assert formula_options("best-constant", opts) == {"choice": searched["best_constant"]}
    # recorded in the folder's settings only when not the default (older folders still match)
    assert settings_of(opts)["oracle_seeds"] == [2003]
    assert "oracle_seeds" not in settings_of(CompareOptions(out=str(tmp_path / "out"), env_config=config))
