"""The runtime layer: thread default, declared-once options, the error contract, atomic files and
the Protocols of the data and policy contracts."""

from __future__ import annotations

import argparse
from dataclasses import field
from typing import Annotated, List, Literal, Optional

import pytest
import torch
from pydantic import Field

from mtkd_env.runtime import resources
from mtkd_env.runtime.cli import ArgumentParser, run_cli
from mtkd_env.runtime.errors import ConfigError, UserError, did_you_mean
from mtkd_env.runtime.files import atomic_write_text, load_weights
from mtkd_env.runtime.options import Cli, add_options, options_from, reference_rows, settings


# --- threads ---------------------------------------------------------------------------------------
@pytest.fixture
def cpus(monkeypatch):
    """8 usable CPUs, torch's own default 8 threads; the test's thread count is restored after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(resources, "usable_cpus", lambda: 8)
    monkeypatch.setattr(resources, "_TORCH_DEFAULT", 8)
    for key in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", resources.THREADS_VARIABLE):
        monkeypatch.delenv(key, raising=False)
    yield
    torch.set_num_threads(before)


def test_thread_default_shares_the_cpus_between_concurrent_processes(cpus, monkeypatch):
    assert resources.default_num_threads() == 8                  # one process keeps torch's default
    assert resources.default_num_threads(workers=2) == 4          # baselines.compare --jobs 2
    assert resources.default_num_threads(workers=16) == 1         # never below one thread
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")                   # torchrun --nproc_per_node 4
    assert resources.default_num_threads() == 2 and resources.default_num_threads(workers=2) == 1
    assert resources.configure_threads(workers=2) == 1 and torch.get_num_threads() == 1


def test_thread_overrides(cpus, monkeypatch):
    monkeypatch.setenv(resources.THREADS_VARIABLE, "3")
    assert resources.configure_threads(workers=4) == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv(resources.THREADS_VARIABLE, "zero")
    with pytest.raises(ConfigError, match="MTKD_NUM_THREADS: expected an integer >= 1, got 'zero'"):
        resources.configure_threads()
    monkeypatch.delenv(resources.THREADS_VARIABLE)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")                    # torch reads it itself: left alone
    torch.set_num_threads(2)
    assert resources.configure_threads(workers=8) == 2


# --- options: a knob declared once ----------------------------------------------------------------
@settings(label="flag")
class _Options:
    name: Annotated[str, Cli(metavar='NAME')]
    """The name."""
    jobs: Annotated[int, Field(ge=1)] = 1
    """Parallel workers."""
    seeds: Annotated[List[Annotated[int, Field(ge=0)]], Field(min_length=1), Cli(item='seed')] = field(default_factory=lambda: [0, 1])
    """Seeds."""
    names: Annotated[List[str], Cli(split=True)] = field(default_factory=list)
    """Comma-separated names."""
    rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    """A rate."""
    mode: Literal["a", "b"] = "a"
    """A mode."""
    cap: Optional[int] = None
    """Optional."""
    extra: dict = field(default_factory=dict)
    """KEY=VALUE pairs."""
    fast: bool = True
    """Go fast."""
    internal: Annotated[str, Cli(hidden=True)] = 'x'
    """Set by the program."""


def _parse(argv):
    parser = ArgumentParser(prog="prog")
    add_options(parser, _Options)
    return options_from(_Options, vars(parser.parse_args(argv)))


def test_options_from_flags_defaults_and_help(capsys):
    opts = _parse(["--name", "n", "--seeds", "3", "--seeds", "4", "--names", "a,b", "c", "--extra", "k=1", "x=[1,2]",
                   "--no-fast", "--mode", "b", "--cap", "7"])
    assert (opts.name, opts.jobs, opts.seeds, opts.names, opts.extra) == ("n", 1, [3, 4], ["a", "b", "c"],
                                                                          {"k": 1, "x": [1, 2]})
    assert (opts.fast, opts.mode, opts.cap, opts.internal) == (False, "b", 7, "x")
    assert _parse(["--name", "n"]).seeds == [0, 1]
    parser = ArgumentParser(prog="prog")
    add_options(parser, _Options)
    text = parser.format_help()
    assert "Parallel workers. (default: 1)" in text and "--internal" not in text and "--no-fast" in text


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs: expected an integer >= 1, got 0"),
    (["--seeds", "-1"], "--seeds: expected integers >= 0, got -1"),
    (["--rate", "0"], "--rate: expected a number in (0, 1], got 0.0"),
    (["--rate", "2.5"], "--rate: expected a number in (0, 1], got 2.5"),
    (["--mode", "c"], "argument --mode: invalid choice: 'c'"),
    (["--extra", "k=1", "k=2"], "--extra: k is given twice (1 and 2); give each key once"),
    (["--extra", "novalue"], "--extra 'novalue': expected KEY=VALUE"),
    ([], "--name is required"),
])
def test_bad_options_are_one_line_user_errors(argv, message):
    base = [] if not argv else ["--name", "n"]
    with pytest.raises(UserError, match=None) as err:
        _parse(base + argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_api_construction_is_checked_like_the_command_line():
    with pytest.raises(ConfigError, match=r"--seeds: expected a non-empty list of seeds"):
        _Options(name="n", seeds=[])
    with pytest.raises(ConfigError, match=r"--jobs: expected int, got str '2'"):
        _Options(name="n", jobs="2")


def test_reference_rows_come_from_the_declaration():
    rows = {row[0]: row for row in reference_rows(_Options)}
    assert rows["jobs"] == ("jobs", "int", "1", ">= 1", "Parallel workers.")
    assert rows["rate"][3] == "in (0, 1]" and rows["mode"][3] == "one of ['a', 'b']"
    assert rows["seeds"][3] == "items >= 0; non-empty" and rows["name"][2] == "required"
    assert rows["cap"][1] == "int or null"


def test_error_messages_quote_a_short_prefix_of_a_huge_value():
    import time

    bomb: list = [0]
    for _ in range(40):  # 2**40 items once expanded: formatting it whole would never end
        bomb = [bomb, bomb]
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        _Options(name="n", seeds=bomb)
    assert time.perf_counter() - start < 1 and len(str(err.value)) < 200, str(err.value)


def test_run_cli_maps_errors_to_exit_codes(capsys):
    def body(argv):
        raise {"user": ConfigError("x: expected y\nsecond line"), "os": PermissionError(13, "Permission denied", "/p"),
               "stop": KeyboardInterrupt()}[argv[0]]

    assert run_cli(body, ["user"]) == 2 and capsys.readouterr().err == "error: x: expected y\n"
    assert run_cli(body, ["os"]) == 2 and capsys.readouterr().err == "error: Permission denied: '/p'\n"
    assert run_cli(body, ["stop"]) == 130
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda argv: 1 // 0, [])
    assert did_you_mean(["batchsize"], ["batch_size", "lr"]) == " (did you mean 'batch_size'?)"
    assert did_you_mean(["zzz"], ["batch_size"]) == ""


# --- files ----------------------------------------------------------------------------------------------
def test_atomic_write_and_weights_only_loading(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights(tmp_path / "ok.pt", "x")["w"], torch.ones(2))
    with pytest.raises(UserError, match="'missing' does not exist"):
        load_weights(tmp_path / "missing.pt", "'missing'")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(UserError, match="could not be read as a weights-only torch file: it is not a torch file"):
        load_weights(tmp_path / "trunc.pt", "file")


# --- protocols ------------------------------------------------------------------------------------------
def test_implementations_satisfy_the_protocols(synthetic_config):
    from baselines import make_policy
    from mtkd_env.data import build_dataset
    from mtkd_env.protocols import ActionPolicy, EvalSet, Splits, TrainLoader, WeightPolicy
    from mtkd_env.episodes import EqualWeights

    cfg = synthetic_config()
    splits = build_dataset(cfg.dataset, seed=0, **cfg.dataset_kwargs)
    device = torch.device("cpu")
    assert isinstance(splits, Splits)
    assert isinstance(splits.train_loader(16, False, device), TrainLoader)
    assert isinstance(splits.eval_set("val", device), EvalSet)
    assert isinstance(make_policy("ebkd"), WeightPolicy) and isinstance(make_policy("ebkd"), ActionPolicy)
    assert isinstance(EqualWeights(), WeightPolicy)


def test_argument_parser_errors_are_usage_errors():
    parser = ArgumentParser(prog="p")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS)
    with pytest.raises(UserError, match=r"argument --seed: invalid int value: 'x' \(see p --help\)"):
        parser.parse_args(["--seed", "x"])
