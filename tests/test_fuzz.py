"""Property-based fuzzing of every public input (issue 18): the config declarations (every field of
`EnvConfig`, found by introspection; every algorithm's hyperparameters, found from its shipped file),
config files, and the env API (reset's seed and options, step's actions on the single and the vector
env).

The contract, for whatever Hypothesis generates: the input is accepted, or it is refused with a
`ConfigError` / `ValueError` whose message is ONE line; a CLI given it exits 2 with one line on
stderr, no traceback, and leaves no files. Fixed example budgets and `derandomize=True`: the same
cases run on every machine, ~700 in all (`FUZZ_CASES` below), in well under a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.algos import REGISTRY, get_spec
from agents.hyperparams import default_hyperparams, load_hyperparams_file, resolve_hyperparams
from mtkd_env import EnvConfig
from mtkd_env.config import load_config_file
from mtkd_env.runtime.errors import ConfigError

FUZZ = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
FUZZ_CASES = {"env_fields": 200, "unknown_keys": 40, "config_files": 60, "hyperparams": 160, "hp_files": 40,
              "cli": 8, "reset": 60, "single_actions": 80, "vector_actions": 80}
"""The example budget of each property below (728 generated cases in total)."""

FIELDS = {f.name: f for f in dataclasses.fields(EnvConfig)}
HINTS = typing.get_type_hints(EnvConfig)


def _refused_in_one_line(exc: BaseException) -> None:
    assert isinstance(exc, (ConfigError, ValueError)), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip() and len(text.strip().splitlines()) == 1, text


def _accepted_or_one_line(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (ConfigError, ValueError) as exc:
        _refused_in_one_line(exc)
        return None


# --- values of every kind, with the nasty ones over-represented ---------------------------------------
numbers = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, -1, 1, 2 ** 63, -2 ** 63]),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20),
                    st.sampled_from(["", "nan", "inf", "-1", "1e9", "cpu", "cuda:99", "x" * 300, "a=b", "[1, 2]"]))


def _nested(depth: int):
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=depth)


def _deep(depth: int):
    """A list nested `depth` deep with a wide leaf (the "huge nested YAML" of the issue, without
    anchors: the anchor bomb is the settings layer's case)."""
    out: object = list(range(200))
    for _ in range(depth):
        out = [out]
    return out


values = st.one_of(scalars, _nested(12), st.integers(1, 60).map(_deep))


def _value_for(hint) -> st.SearchStrategy:
    """Values near the field's declared type (right type, edge values) or of any other kind."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        return st.one_of(*[_value_for(a) for a in args if a is not type(None)], st.none())
    if hint is bool:
        return st.one_of(st.booleans(), values)
    if hint is int:
        return st.one_of(st.integers(-5, 5), st.integers(-2 ** 40, 2 ** 40), values)
    if hint is float:
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), values)
    if hint is str:
        return st.one_of(st.text(max_size=12), values)
    if origin in (list, tuple):
        elem = args[0] if args else typing.Any
        return st.one_of(st.lists(_value_for(elem) if elem is not typing.Any else scalars, max_size=4), values)
    return values


@st.composite
def field_and_value(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    return name, draw(_value_for(HINTS[name]))


# --- (a) the config declarations -----------------------------------------------------------------------
@settings(max_examples=FUZZ_CASES["env_fields"], **FUZZ)
@given(field_and_value())
def test_every_env_config_field_accepts_or_refuses_in_one_line(case):
    name, value = case
    config = _accepted_or_one_line(EnvConfig.from_dict, {name: value})
    if config is not None:  # accepted: it round-trips, so a run's saved config rebuilds it
        assert EnvConfig.from_dict(config.to_dict()) == config


@settings(max_examples=FUZZ_CASES["unknown_keys"], **FUZZ)
@given(st.dictionaries(st.text(min_size=1, max_size=30).filter(lambda k: k not in FIELDS), values,
                       min_size=1, max_size=3))
def test_unknown_env_config_keys_are_refused_in_one_line(data):
    with pytest.raises(ConfigError) as caught:
        EnvConfig.from_dict(data)
    _refused_in_one_line(caught.value)
    assert "unknown EnvConfig field" in str(caught.value)


yaml_documents = st.one_of(
    st.just(""), st.just("\n\n"), st.just("# only a comment\n"), st.just("---\n...\n"), st.just("[1, 2"),
    st.just("{a: [}"), st.just("\t- tab"), st.just("\x00\x01binary"), st.text(max_size=80),
    st.builds(lambda v: yaml.safe_dump(v), values),
    st.builds(lambda d: yaml.safe_dump(dict(d)), st.lists(field_and_value(), max_size=3)),
    st.builds(lambda d: yaml.safe_dump({"teachers": _deep(d)}), st.integers(1, 80)))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=FUZZ_CASES["config_files"], **FUZZ)
@given(yaml_documents, st.sampled_from([".yaml", ".yml", ".json"]))
def test_env_config_files_load_or_are_refused_in_one_line(fuzz_dir, text, suffix):
    path = fuzz_dir / f"env{suffix}"
    path.write_text(text, errors="replace")
    data = _accepted_or_one_line(load_config_file, path)
    if data is not None:
        _accepted_or_one_line(EnvConfig.from_dict, data)


def _hp_keys():
    """(algo, key, shipped value) of every shipped hyperparameter, and the run keys every algo takes."""
    out = []
    for algo in sorted(REGISTRY):
        for key, value in default_hyperparams(algo).items():
            out.append((algo, key, value))
        out.append((algo, "n_envs", 1))
    return out


HP_KEYS = _hp_keys()


@st.composite
def hyperparameter(draw):
    algo, key, shipped = draw(st.sampled_from(HP_KEYS))
    kind = type(shipped)
    near = {bool: st.booleans(), int: st.integers(-3, 2 ** 40), float: st.floats(allow_nan=True, allow_infinity=True),
            str: st.text(max_size=10)}.get(kind, values)
    bad_key = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
    if bad_key:
        key = draw(st.text(min_size=1, max_size=12))
    return algo, key, draw(st.one_of(near, values))


@settings(max_examples=FUZZ_CASES["hyperparams"], **FUZZ)
@given(hyperparameter())
def test_every_hyperparameter_accepts_or_refuses_in_one_line(case):
    algo, key, value = case
    spec = get_spec(algo)
    _accepted_or_one_line(resolve_hyperparams, algo, spec.validate, overrides={key: value})


@settings(max_examples=FUZZ_CASES["hp_files"], **FUZZ)
@given(yaml_documents, st.sampled_from(sorted(REGISTRY)), st.booleans())
def test_hyperparameter_files_load_or_are_refused_in_one_line(fuzz_dir, text, algo, keyed):
    path = fuzz_dir / "hp.yml"
    if keyed and text.strip():
        text = "MultiTeacherKD-v0:\n" + "".join("  " + line + "\n" for line in text.splitlines())
    path.write_text(text, errors="replace")
    data = _accepted_or_one_line(load_hyperparams_file, path)
    if data is not None:
        _accepted_or_one_line(resolve_hyperparams, algo, get_spec(algo).validate, file=path)


# --- the contract on the command line: exit 2, one line, no traceback, nothing left --------------------
@settings(max_examples=FUZZ_CASES["cli"], **FUZZ)
@given(st.sampled_from(sorted(REGISTRY)), yaml_documents, st.sampled_from(["env", "hp"]))
def test_cli_refuses_bad_files_with_exit_2_and_leaves_nothing(fuzz_dir, algo, text, which):
    import agents.train as train

    bad = fuzz_dir / ("cli.yml")
    # An unknown key makes every such file bad, so no case starts a run; the rest of it is fuzzed.
    data = None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        pass
    if isinstance(data, dict):
        body = yaml.safe_dump({**data, "zz_not_a_key": 1})
    elif data is None:  # an empty file is a valid (empty) config
        body = "zz_not_a_key: 1\n"
    else:
        body = text
    bad.write_text(body, errors="replace")
    out = fuzz_dir / "cli_out"
    # --total-timesteps 0: a second bad input, checked after the file, so that no case can ever train.
    argv = ["--algo", algo, "--out", str(out), "--wandb", "disabled", "--no-progress", "--total-timesteps", "0",
            "--env-config" if which == "env" else "--hyperparams", str(bad)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train.main(argv)
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err.getvalue()[-2000:])
    assert not out.exists()


# --- (b) the env API: reset's seed and options, step's actions ----------------------------------------
@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    from mtkd_env.env import MultiTeacherKDEnv
    from mtkd_env.vector_env import MultiTeacherKDVectorEnv

    cache = str(tmp_path_factory.mktemp("fuzz_teachers"))
    teacher = EnvConfig(dataset="synthetic", dataset_kwargs={"shape": [1, 8, 8], "num_classes": 4, "n_train": 64,
                                                             "n_val": 32, "n_test": 32},
                        teachers=["mlp", "cnn=random"], teacher_cache_dir=cache, teacher_epochs=1, max_steps=1000,
                        batch_size=8, probe_size=16, show_progress=False, device="cpu")
    sample = teacher.replace(granularity="sample")
    single, vector = MultiTeacherKDEnv(teacher), MultiTeacherKDVectorEnv(3, sample)
    single.reset(seed=0)
    vector.reset(seed=0)
    yield single, vector
    vector.close()


DTYPES = [np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64, np.str_, object]


@st.composite
def actions(draw, shape):
    """An array of `shape` (or of a shape one edit away), of some dtype, maybe with NaN/inf entries."""
    if draw(st.integers(0, 3)) == 0:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    values = np.asarray(draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=int(np.prod(shape)),
                                      max_size=int(np.prod(shape)))), dtype=np.float64).reshape(shape)
    if values.size and draw(st.booleans()):
        flat = values.reshape(-1)
        for i in draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=3)):
            flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if dtype is np.str_:
        return values.astype(str)
    if dtype is object:
        return values.astype(object) if draw(st.booleans()) else values.tolist()
    return values.astype(dtype) if np.issubdtype(dtype, np.floating) or dtype is np.complex64 else \
        np.nan_to_num(values, nan=0, posinf=1, neginf=-1).astype(dtype)


def _valid(action, shape) -> bool:
    a = np.asarray(action)
    return a.dtype.kind in "fiu" and a.shape == shape and bool(np.all(np.isfinite(a.astype(np.float64))))


@settings(max_examples=FUZZ_CASES["reset"], **FUZZ)
@given(st.one_of(st.none(), st.integers(-3, 2 ** 64), values),
       st.one_of(st.none(), st.just({}), st.dictionaries(st.text(max_size=10), values, max_size=2), values),
       st.booleans())
def test_reset_seed_and_options_accept_or_refuse_in_one_line(envs, seed, options, vector):
    env = envs[1] if vector else envs[0]
    _accepted_or_one_line(env.reset, seed=seed, options=options)
    env.reset(seed=0)  # whatever happened, the env still works


@settings(max_examples=FUZZ_CASES["single_actions"], **FUZZ)
@given(st.data())
def test_single_env_step_accepts_exactly_the_valid_actions(envs, data):
    env = envs[0]
    action = data.draw(actions(env.action_space.shape))
    try:
        env.step(action)
        assert _valid(action, env.action_space.shape), action
    except ValueError as exc:
        _refused_in_one_line(exc)
        assert not _valid(action, env.action_space.shape), (action, exc)


@settings(max_examples=FUZZ_CASES["vector_actions"], **FUZZ)
@given(st.data())
def test_vector_env_step_accepts_exactly_the_valid_actions_and_names_the_bad_row(envs, data):
    env = envs[1]
    shape = env.action_space.shape
    action = data.draw(actions(shape))
    try:
        env.step(action)
        assert _valid(action, shape), action
    except ValueError as exc:
        _refused_in_one_line(exc)
        assert not _valid(action, shape), (action, exc)
        a = np.asarray(action)
        if a.dtype.kind in "fiu" and a.shape == shape:  # right shape and dtype: a NaN/inf row, named
            first_bad = int(np.flatnonzero((~np.isfinite(a.astype(np.float64))).reshape(len(a), -1).any(1))[0])
            assert f"actions row {first_bad}:" in str(exc), exc
