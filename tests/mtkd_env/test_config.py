"""EnvConfig: loading, overrides and one-line validation errors."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import mtkd_env
from mtkd_env.config import ConfigError, EnvConfig, parse_overrides


def test_defaults_are_the_embedded_benchmark():
    cfg = EnvConfig()
    assert cfg.dataset == "digits" and cfg.kd_temperature == 4.0 and cfg.kd_alpha == 1.0 and cfg.feat_beta == 5.0
    assert cfg.granularity == "teacher" and cfg.feature_kd is True and cfg.steps_per_action == 1
    docs = EnvConfig.field_docs()
    assert all(docs.get(name) for name in cfg.to_dict()), "every field is documented"


@pytest.mark.parametrize("data, match", [
    ({"nope": 1}, r"unknown EnvConfig field\(s\) \['nope'\]; known fields"),
    ({"batch_size": "64"}, r"batch_size: expected int, got str '64'"),
    ({"batch_size": 0}, r"batch_size: expected an integer >= 1"),
    ({"granularity": "pixel"}, r"granularity: expected one of \['teacher', 'sample'\]"),
    ({"teachers": []}, r"teachers: expected a non-empty list"),
    ({"feature_kd": "yes"}, r"feature_kd: expected bool"),
    ({"lr": -1.0}, r"lr: expected a number >= 0"),
    ({"granularity": "sample", "steps_per_action": 2}, r"steps_per_action: sample granularity"),
    ({"device": "tpu"}, r"device: expected 'auto', 'cpu'"),
    ({"max_steps": 0}, r"max_steps: expected an integer >= 1 or null"),
    ({"epochs": float("inf")}, r"epochs: expected a finite number, got inf"),
    ({"lr": float("nan")}, r"lr: expected a finite number"),
])
def test_bad_values_give_one_line_errors(data, match):
    with pytest.raises(ConfigError, match=match) as err:
        EnvConfig.from_dict(data)
    assert "\n" not in str(err.value)


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("batch_size: 32\nlr: 1e-3\nteachers: [mlp, cnn]\n")
    cfg = EnvConfig.from_file(y)
    assert cfg.batch_size == 32 and cfg.lr == 1e-3 and cfg.teachers == ["mlp", "cnn"]
    j = tmp_path / "c.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert EnvConfig.from_file(j) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid"):
        EnvConfig.from_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        EnvConfig.from_file(tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        EnvConfig.from_file(lst)


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("null", None)])
def test_teacher_cache_setting_reads_from_files_and_flags(tmp_path, text, value):
    """Files written when the field was a plain bool (true/false) keep their meaning; null is auto."""
    y = tmp_path / "c.yaml"
    y.write_text(f"cache_teacher_outputs: {text}\n")
    assert EnvConfig.from_file(y).cache_teacher_outputs is value
    assert EnvConfig().replace(**parse_overrides([f"cache_teacher_outputs={text}"])).cache_teacher_outputs is value
    assert EnvConfig().cache_teacher_outputs is None
    with pytest.raises(ConfigError, match="cache_teacher_outputs"):
        EnvConfig(cache_teacher_outputs="sometimes")


def test_overrides_and_replace():
    cfg = EnvConfig().replace(**parse_overrides(["epochs=2", "teachers=[mlp,cnn]", "device=cpu", "lr=1e-2"]))
    assert cfg.epochs == 2 and cfg.teachers == ["mlp", "cnn"] and cfg.device == "cpu" and cfg.lr == 0.01
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="unknown EnvConfig field"):
        EnvConfig().replace(epoch=3)


def test_gym_make_accepts_config_or_overrides(tiny_config):
    cfg = tiny_config(max_steps=4)
    env = gym.make(mtkd_env.ENV_ID, config=cfg)
    assert env.unwrapped.config == cfg
    env = gym.make(mtkd_env.ENV_ID, config=cfg, batch_size=16)
    assert env.unwrapped.config.batch_size == 16 and env.unwrapped.config.max_steps == 4
    with pytest.raises(ConfigError, match="unknown EnvConfig field"):
        gym.make(mtkd_env.ENV_ID, config=cfg, bogus=1)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, mtkd_env; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
