"""Settings declared once (pydantic): introspection, JSON schema, reference rows, and the inputs
that once hung or misled (issue 18): YAML anchor bombs, a float field called an integer."""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import Annotated, Optional

import pytest

from agents.hyperparams import resolve_hyperparams
from mtkd_env.config import ConfigError, EnvConfig, parse_overrides
from mtkd_env.runtime.cli import ArgumentParser, UsageError
from mtkd_env.runtime.options import Cli, add_options, options_from, reference_rows, settings



def _bomb(levels: int = 9) -> str:
    """A YAML flow list of `levels` levels, each 9 references to the one below: 9**levels values once
    expanded, from a few hundred bytes (the anchors sit inside the field, so no unknown key stops it)."""
    flow = "[1, 2, 3, 4, 5, 6, 7, 8, 9]"
    for level in range(levels):
        flow = f"[&l{level} {flow}, " + ", ".join([f"*l{level}"] * 8) + "]"
    return flow


@pytest.mark.parametrize("field", ["lr_milestones", "teachers", "log_rewards", "dataset_kwargs", "batch_size"])
def test_a_yaml_anchor_bomb_is_refused_at_once(tmp_path, field):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"{field}: {_bomb()}\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        EnvConfig.from_file(path)
    message = str(err.value)
    assert "expected at most" in message and time.perf_counter() - start < 5 and "\n" not in message and len(message) < 300, message


def test_an_anchor_bomb_in_a_known_field_given_directly_fails_fast():
    bomb: list = [1.0]
    for _ in range(9):
        bomb = [bomb] * 9
    start = time.perf_counter()
    for field, value in (("lr_milestones", bomb), ("teachers", bomb), ("dataset_kwargs", {"shape": bomb})):
        with pytest.raises(ConfigError) as err:
            EnvConfig(**{field: value})
        assert len(str(err.value)) < 200, str(err.value)
    with pytest.raises(ConfigError, match="expected at most"):
        parse_overrides([f"teachers={_bomb()}"])
    assert time.perf_counter() - start < 5


def test_a_hyperparameter_file_bomb_is_refused(tmp_path):
    path = tmp_path / "hp.yml"
    path.write_text(f"MultiTeacherKD-v0:\n  learning_rate: {_bomb()}\n")
    with pytest.raises(ConfigError, match="expected at most"):
        resolve_hyperparams("ppo", lambda hp: hp, file=path)


@pytest.mark.parametrize("algo, hp, message", [
    ("ppo", {"learning_rate": -1}, "hyperparameter learning_rate: expected a number > 0 or 'lin_<number>', got -1"),
    ("ppo", {"learning_rate": "lin_x"}, "hyperparameter learning_rate: expected a number > 0 or 'lin_<number>'"),
    ("ppo", {"gamma": 1.5}, "hyperparameter gamma: expected a number in [0, 1], got 1.5"),
    ("ppo", {"n_steps": 0}, "hyperparameter n_steps: expected an integer >= 1 or 'episode', got 0"),
    ("ppo", {"normalize": {"clip_obs": -1}}, "hyperparameter normalize.clip_obs: expected a number >= 0, got -1"),
    ("ppo", {"normalize": {"clip": 1}}, "unknown hyperparameter normalize key(s) ['clip']"),
    ("mtkd-rl", {"lr": -1}, "hyperparameter lr: expected a number > 0, got -1"),
    ("mtkd-rl", {"hidden_size": 0.5}, "hyperparameter hidden_size: expected int, got float 0.5"),
    ("mtkd-rl", {"n_timesteps": 0}, "hyperparameter n_timesteps: expected an integer >= 1, got 0"),
    ("rmts", {"baseline_decay": 1.0}, "hyperparameter baseline_decay: expected a number in [0, 1), got 1.0"),
    ("rmts", {"optimizer": "rmsprop"}, "hyperparameter optimizer: expected one of ['adam', 'sgd'], got 'rmsprop'"),
])
def test_hyperparameter_errors_name_the_declared_type(algo, hp, message):
    from agents.algos import get_spec

    with pytest.raises(ConfigError) as err:
        resolve_hyperparams(algo, get_spec(algo).validate, overrides=hp)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_env_config_is_introspectable_and_has_a_json_schema():
    hints = typing.get_type_hints(EnvConfig)
    assert {f.name for f in dataclasses.fields(EnvConfig)} == set(hints)
    assert hints["batch_size"] is int and hints["granularity"] == typing.Literal["teacher", "sample"]
    schema = EnvConfig.json_schema()
    props = schema["properties"]
    assert props["batch_size"]["minimum"] == 1 and props["granularity"]["enum"] == ["teacher", "sample"]
    assert props["lr_milestones"]["items"]["exclusiveMaximum"] == 1 and schema["additionalProperties"] is False
    assert "Training batch size" in props["batch_size"]["description"]
    cfg = EnvConfig(batch_size=8)
    assert dataclasses.replace(cfg, lr=0.1).lr == 0.1 and dataclasses.asdict(cfg)["batch_size"] == 8


def test_reference_rows_of_env_config():
    rows = {row[0]: row for row in reference_rows(EnvConfig)}
    assert len(rows) == len(dataclasses.fields(EnvConfig)) and all(row[4] for row in rows.values())
    assert rows["noisy_label_fraction"][1:4] == ("float", "0.7", "in [0, 1]")
    assert rows["granularity"][3] == "one of ['teacher', 'sample']"
    assert rows["max_steps"][1:4] == ("int or null", "None", ">= 1")


@pytest.mark.parametrize("module, argv, message", [
    ("benchmarks.vector_env", ["--k", "0"], "--k: expected integers >= 1, got 0"),
    ("benchmarks.vector_env", ["--modes", "fast"], "--modes: expected one of ['batched', 'sync', 'async'], got 'fast'"),
    ("benchmarks.step_overhead", ["--warmup", "-1"], "--warmup: expected an integer >= 0, got -1"),
    ("benchmarks.loader", ["--batch", "0"], "--batch: expected an integer >= 1, got 0"),
])
def test_benchmark_flags_are_checked_before_any_work(capsys, module, argv, message):
    import importlib

    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err


def test_a_positional_field_and_a_hidden_default():
    """`Cli(positional=True)` makes a positional argument (required without a default), errors name it
    by its metavar; `help_default=""` shows no default in --help."""
    @settings(label="flag")
    class Positional:
        path: Annotated[str, Cli(positional=True, metavar="DIR")]
        """A folder."""
        count: Annotated[Optional[int], Cli(help_default="")] = None
        """How many."""

    parser = ArgumentParser(prog="p")
    add_options(parser, Positional)
    assert options_from(Positional, vars(parser.parse_args(["x", "--count", "3"]))) == Positional("x", 3)
    assert options_from(Positional, vars(parser.parse_args(["x"]))).count is None
    with pytest.raises(UsageError):
        parser.parse_args([])
    text = parser.format_help()
    assert "DIR" in text and "A folder." in text and "(default" not in text
    with pytest.raises(ConfigError, match=r"^DIR: expected str, got int 3$"):
        Positional(path=3)
