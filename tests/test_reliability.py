"""Issue 18: each failure a new user found, reproduced and fixed (docs/reliability.md lists them).

Every CLI case asserts the contract: one line on stderr naming what was wrong and what was expected,
exit 2, no traceback, nothing left behind.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import posix
import re
import signal
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import agents.curves as curves
import agents.train as train
from agents import api
from agents.run import CLI_EVAL_EPISODES, Run, TrainingInterrupted, _make_unique_dir
from baselines.compare import main as compare
from mtkd_env.__main__ import main as episode
from mtkd_env.runtime.files import why_unreadable

from tests.runs import metric_rows

# The tiny synthetic env of this module's CLI runs; the `env_args` fixture (tests/conftest.py) makes its --env flags.
SYNTH = {"dataset": "synthetic", "dataset_kwargs": "{shape: [1, 8, 8], num_classes: 4, n_train: 128, n_val: 64, n_test: 64}",
         "teachers": "[mlp, cnn=random]", "teacher_epochs": "2", "max_steps": "8", "batch_size": "16",
         "probe_size": "32", "show_progress": "false", "device": "cpu"}


def _one_line(err: str, *expected: str) -> str:
    err = err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "EOFError" not in err and "ConnectionResetError" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _ppo_file(tmp_path: Path) -> str:
    path = tmp_path / "ppo.yml"
    path.write_text("n_steps: 8\nbatch_size: 8\nn_epochs: 1\n")
    return str(path)


# --- subproc workers: bad input is the batched mode's one line, not worker tracebacks -----------------
@pytest.mark.parametrize("bad", ["student", "teacher"])
def test_subproc_workers_report_bad_input_as_the_batched_line(bad, capfd, tmp_path, env_args):
    """capfd: the workers are other processes, whose tracebacks went to the real stderr."""
    missing = tmp_path / "missing.pt"
    override = {"student": "nope"} if bad == "student" else {"teachers": f"[mlp={missing}]"}
    lines = {}
    for kind in ("batched", "subproc"):
        out = tmp_path / kind
        capfd.readouterr()
        assert train.main(["--algo", "ppo", "--n-envs", "2", "--vec-env", kind, *env_args(**override),
                           "--hyperparams", _ppo_file(tmp_path), "--out", str(out), "--wandb", "disabled",
                           "--no-progress"]) == 2
        lines[kind] = _one_line(capfd.readouterr().err,
                                "unknown model 'nope'" if bad == "student" else f"{str(missing)!r} does not exist")
        assert not out.exists()
    assert lines["subproc"] == lines["batched"]


# --- two runs into one --out with the same seed, started together --------------------------------------
def test_run_folders_are_claimed_by_mkdir_so_concurrent_runs_never_collide(tmp_path, monkeypatch):
    """The interleaving that failed: another run creates the folder between our check and our mkdir.
    Here that other run is simulated inside `mkdir` itself, deterministically."""
    base = tmp_path / "out" / "MultiTeacherKD-v0__ppo__0__1700000000"
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == base and not self.exists():
            real_mkdir(self)  # the other run wins the race for the name
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    got = _make_unique_dir(base)
    assert got == base.parent / (base.name + "_1") and got.is_dir()
    assert _make_unique_dir(base) == base.parent / (base.name + "_2")


def test_two_runs_same_second_same_seed_get_two_folders(tmp_path, monkeypatch, synthetic_config):
    import agents.run as run_module

    monkeypatch.setattr(run_module.time, "time", lambda: 1700000000.0)  # both start in the same second
    kwargs = dict(env_config=synthetic_config(), total_timesteps=4, out_dir=str(tmp_path), show_progress=False,
                  save_freq=0)
    a = api.train("mtkd-rl", **kwargs)
    b = api.train("mtkd-rl", **kwargs)
    assert a != b and a.parent == b.parent and b.name == a.name + "_1"
    assert (a / "summary.json").is_file() and (b / "summary.json").is_file()


# --- a torn last line of metrics.jsonl ------------------------------------------------------------------
class _Signal(BaseCallback):
    def __init__(self, at: int, signum: int = signal.SIGINT, times: int = 1) -> None:
        super().__init__()
        self.at, self.signum, self.times = at, signum, times

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
        return True


def test_torn_metrics_tail_is_skipped_by_curves_and_resume(synthetic_config, tmp_path, capsys):
    kwargs = dict(env_config=synthetic_config(), total_timesteps=20, hyperparams={"agent_step": 5},
                  show_progress=False, save_freq=0)
    straight = api.train("mtkd-rl", out_dir=str(tmp_path / "a"), **kwargs)
    with pytest.raises(TrainingInterrupted) as caught:
        api.train("mtkd-rl", out_dir=str(tmp_path / "b"), callbacks=[_Signal(9)], **kwargs)
    run_dir = caught.value.run_dir
    metrics = run_dir / "metrics.jsonl"
    whole = metrics.read_text()
    with metrics.open("a") as f:  # what a process killed in the middle of a write leaves
        f.write('{"global_step": 11, "step/rew')
    capsys.readouterr()
    assert curves.main([str(run_dir), "--out", str(tmp_path / "c.png")]) == 0, capsys.readouterr().err
    resumed = Run.resume(run_dir).train()
    assert metric_rows(resumed) == metric_rows(straight)  # nothing lost, the torn row written again
    assert whole.splitlines() == metrics.read_text().splitlines()[:len(whole.splitlines())]


def test_a_bad_metrics_line_before_the_end_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"global_step": 1}\n{"global_st\n{"global_step": 2}\n')
    assert curves.main([str(run_dir)]) == 2
    _one_line(capsys.readouterr().err, "line 2", "expected a JSON object (a metrics row of agents.train)")
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]


# --- unsafe pickles: never torch's advice to load them unsafely, whatever its wording -------------------
class _Evil:
    def __reduce__(self):
        return (posix.system, ("echo pwned",))


def test_unsafe_pickle_teacher_is_refused_without_unsafe_advice(capsys, tmp_path, env_args):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    capsys.readouterr()
    assert episode(env_args(teachers=f"[mlp={evil}]")) == 2
    err = _one_line(capsys.readouterr().err, "GLOBAL posix.system", "never unpickled")
    assert "weights_only" not in err.replace("weights-only", "") and "False" not in err and "trusted" not in err


@pytest.mark.parametrize("text", [
    # torch 2.4-2.6
    "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but "
    "it can result in arbitrary code execution.\nPlease file an issue with the following so that we can make "
    "`weights_only=True` compatible with your use case: WeightsUnpickler error: Unsupported global: GLOBAL posix.system",
    # torch 2.14
    "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument ... "
    "Re-running `torch.load` with `weights_only` set to `False` will likely succeed ...\n\n\nTrying to load "
    "unsupported GLOBAL posix.system whose module posix is blocked.",
    # a wording that does not exist yet, without the name of the global
    "Loading refused; to load it anyway pass weights_only=False (only for files from trusted sources)",
])
@pytest.mark.parametrize("kind", [pickle.UnpicklingError, RuntimeError])
def test_unreadable_reason_never_advises_unsafe_loading(text, kind):
    reason = why_unreadable(kind(text))
    assert len(reason.splitlines()) == 1
    for advice in ("weights_only", "False", "trusted", "Re-running", "arbitrary"):
        assert advice not in reason, reason
    if "GLOBAL posix.system" in text:
        assert "GLOBAL posix.system" in reason


# --- two fast SIGTERMs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_with_its_own_code(signum, capsys, tmp_path, env_args, monkeypatch):
    real = api.prepare_run
    monkeypatch.setattr(api, "prepare_run", lambda *a, **k: real(*a, callbacks=[_Signal(3, signum, times=2)], **k))
    code = train.main(["--algo", "ppo", "--total-timesteps", "32", "--save-freq", "0", *env_args(),
                       "--out", str(tmp_path / "out"), "--wandb", "disabled", "--no-progress",
                       "--hyperparams", _ppo_file(tmp_path)])
    assert code == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    assert "aborted before the first checkpoint" in capsys.readouterr().err


# --- rmts (and the MTKD-RL agents) with --n-envs / --vec-env ------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--n-envs", "2", "--vec-env", "subproc"], "n_envs: rmts trains one student at a time (n_envs 1)"),
    (["--vec-env", "subproc"], "vec_env: rmts trains one student at a time and runs no vector env"),
])
def test_rmts_with_a_vector_env_is_one_clear_line(flags, expected, capsys, tmp_path, env_args):
    out = tmp_path / "out"
    capsys.readouterr()
    assert train.main(["--algo", "rmts", *flags, *env_args(), "--out", str(out), "--wandb", "disabled"]) == 2
    err = _one_line(capsys.readouterr().err, expected, "SB3 algorithms")
    assert "unknown rmts hyperparameter" not in err
    assert not out.exists()


# --- --help and the agents page ----------------------------------------------------------------------------
def test_help_lists_every_algo_and_the_readme_default_matches(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    algo_help = text.split("--algo NAME", 2)[2].split("--total-timesteps", 1)[0]
    for name in api.ALGOS:
        assert re.search(rf"\b{re.escape(name)}\b", algo_help), (name, algo_help)
    assert f"trained policy and equal weights. (default: {CLI_EVAL_EPISODES})" in text
    readme = " ".join((Path(__file__).parents[1] / "docs" / "agents.md").read_text().split())
    assert f"`--eval-episodes N` (students in the final summary, default {CLI_EVAL_EPISODES})" in readme


# --- baselines.compare follows WANDB_MODE; a W&B run holds the ranking table -------------------------------
def test_compare_follows_wandb_mode_and_logs_the_ranking_table(monkeypatch, tmp_path, env_args, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    out = tmp_path / "cmp"
    assert compare(["--policies", "aver,best", "--seeds", "0", *env_args(max_steps="4"), "--out", str(out),
                    "--no-progress"]) == 0
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # aver seed 0, best seed 0, the ranking
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/ranking_*.table.json"))
    assert len(tables) == 1, [str(p) for p in (out / "wandb").rglob("*")]
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["rank", "policy", "n"]
    assert [row[0] for row in table["data"]] == [1, 2] and {row[1] for row in table["data"]} == {"aver", "best"}


def test_compare_without_wandb_mode_disabled_writes_no_wandb(monkeypatch, tmp_path, env_args):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "cmp"
    assert compare(["--policies", "aver", "--seeds", "0", *env_args(max_steps="4"), "--out", str(out),
                    "--no-progress"]) == 0
    assert not (out / "wandb").exists()


# --- every benchmark's flags: type and range before any work ------------------------------------------
@pytest.mark.parametrize("bench, argv, expected", [
    ("loader", ["--batch", "0"], "error: --batch: expected an integer >= 1, got 0"),
    ("loader", ["--workers", "-1"], "error: --workers: expected an integer >= 0, got -1"),
    ("loader", ["--images", "many"], "error: argument --images: expected an integer, got 'many'"),
    ("loader", ["--device", "tpu"], "device"),
    ("step_overhead", ["--batch", "16", "-3"], "error: --batch: expected integers >= 1, got -3"),
    ("step_overhead", ["--blocks", "0"], "error: --blocks: expected an integer >= 1, got 0"),
    ("step_overhead", ["--per-block", "1.5"], "error: argument --per-block: expected an integer, got '1.5'"),
    ("step_overhead", ["--json", "{tmp}"], "--json"),
    ("vector_env", ["--k", "0"], "error: --k: expected integers >= 1, got 0"),
    ("vector_env", ["--rounds", "0"], "error: --rounds: expected an integer >= 1, got 0"),
    ("vector_env", ["--warmup", "-1"], "error: --warmup: expected an integer >= 0, got -1"),
    ("vector_env", ["--json", "{tmp}"], "--json"),
])
def test_benchmark_flags_are_checked_before_any_work(bench, argv, expected, capsys, tmp_path):
    import importlib

    module = importlib.import_module(f"benchmarks.{bench}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]  # a folder given as the --json file
    before = sorted(tmp_path.iterdir())
    capsys.readouterr()
    assert module.main(argv) == 2
    _one_line(capsys.readouterr().err, expected)
    assert sorted(tmp_path.iterdir()) == before
