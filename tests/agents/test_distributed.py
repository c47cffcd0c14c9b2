"""`agents.train` under torchrun (CPU, gloo, 2 processes): rank 0 alone writes and prints, the
final evaluation runs on every rank, SIGTERM stops every rank at one safe point, and `--resume`
continues bit-identically with the same world size and refuses another one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from agents.train import main as train_main
from tests.runs import diff_states, metric_rows

ROOT = Path(__file__).resolve().parents[2]
# A student without BatchNorm; augmentation on, so every rank draws its own augmentation randomness.
SYNTH = ["dataset=synthetic", "dataset_kwargs={shape: [1, 8, 8], num_classes: 4, n_train: 128, n_val: 32, n_test: 32}",
         "teachers=[mlp=random, cnn=random]", "student=mlp", "feature_kd=false", "augment=true", "max_steps=8",
         "batch_size=16", "probe_size=16", "show_progress=false", "device=cpu"]
PPO_HP = "n_steps: 16\nbatch_size: 8\nn_epochs: 2\n"


def _torchrun(args: list, logs: Path, cache: str, wait: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "agents.train", "--no-progress", *args]
    if "--resume" not in args:
        cmd += ["--env", *SYNTH, f"teacher_cache_dir={cache}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rank_output(logs: Path, rank: int) -> str:
    files = sorted(logs.glob(f"*/attempt_0/{rank}/std*.log"))
    assert len(files) == 2, files  # stdout.log and stderr.log of that rank
    return "".join(f.read_text() for f in files)


def _only_run_dir(out: Path) -> Path:
    dirs = list(out.iterdir())
    assert len(dirs) == 1, dirs  # one run directory: rank 1 created none of its own
    return dirs[0]


@pytest.fixture(scope="module")
def ppo_runs(tmp_path_factory, teacher_cache):
    """A 200-step run with a final evaluation, and a 100-step run extended to 200 by --resume."""
    tmp = tmp_path_factory.mktemp("ddp_ppo")
    (tmp / "hp.yml").write_text(PPO_HP)
    common = ["--algo", "ppo", "--hyperparams", str(tmp / "hp.yml")]
    straight = _torchrun(common + ["--total-timesteps", "200", "--eval-episodes", "1", "--out", str(tmp / "a")],
                         tmp / "logs_a", teacher_cache)
    _torchrun(common + ["--total-timesteps", "100", "--eval-episodes", "0", "--out", str(tmp / "b")],
              tmp / "logs_b", teacher_cache)
    resumed_dir = _only_run_dir(tmp / "b")
    _torchrun(["--resume", str(resumed_dir), "--total-timesteps", "200", "--eval-episodes", "0"],
              tmp / "logs_c", teacher_cache)
    return tmp, straight, _only_run_dir(tmp / "a"), resumed_dir


def test_two_rank_ppo_run_writes_once_from_rank_0(ppo_runs):
    tmp, _, run_dir, _ = ppo_runs
    assert {"config.yaml", "model.zip", "summary.json", "metrics.jsonl", "checkpoint", "tb"} <= {
        p.name for p in run_dir.iterdir()}
    assert _rank_output(tmp / "logs_a", 1) == ""  # rank 1 printed nothing, not even warnings
    out0 = _rank_output(tmp / "logs_a", 0)
    assert out0.count("== ppo on MultiTeacherKD-v0") == 1 and out0.count("equal weights (AVER)") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_timesteps"] == 208 and len(summary["eval"]["policy_test_acc"]) == 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["world_size"] == 2
    state = torch.load(run_dir / "checkpoint/state.pt", weights_only=True)
    # Rank 1's augmentation generator is its own; the rest of its loader state is rank 0's.
    assert state["dist"]["world_size"] == 2 and state["dist"]["loader_overrides"][0] == {}
    assert set(state["dist"]["loader_overrides"][1]) == {"aug_generator"}


def test_resume_under_torchrun_is_bit_identical(ppo_runs):
    tmp, _, straight, resumed = ppo_runs
    a = torch.load(straight / "checkpoint/state.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint/state.pt", weights_only=True)
    assert a["num_timesteps"] == b["num_timesteps"] == 208
    assert diff_states(a, b) == []
    assert metric_rows(straight) == metric_rows(resumed)
    assert _rank_output(tmp / "logs_c", 1) == ""


def test_resume_with_another_world_size_exits_2_with_both_sizes(ppo_runs, tmp_path, capsys):
    _, _, _, run_dir = ppo_runs
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert train_main(["--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "trained with world size 2" in err and "this launch has world size 1" in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_mtkd_rl_two_ranks_sigterm_then_resume(tmp_path, teacher_cache):
    """SIGTERM to the launcher reaches both ranks; both stop at the same safe point, rank 0 saves,
    and a torchrun --resume finishes the run with the evaluation on both ranks."""
    proc = _torchrun(["--algo", "mtkd-rl", "--total-timesteps", "100000", "--save-freq", "0", "--eval-episodes", "1",
                      "--out", str(tmp_path / "out")], tmp_path / "logs", teacher_cache, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "out").glob("*/metrics.jsonl"))
        if found and found[0].stat().st_size > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)  # torchrun's own 30 s grace would end in SIGKILL: fail before
    run_dir = _only_run_dir(tmp_path / "out")
    out0 = _rank_output(tmp_path / "logs", 0)
    assert "interrupted by SIGTERM" in out0, out0[-2000:] + stderr[-2000:]
    assert _rank_output(tmp_path / "logs", 1) == ""
    assert not (run_dir / "summary.json").exists()
    stopped = torch.load(run_dir / "checkpoint/state.pt", weights_only=True)["num_timesteps"]
    assert 0 < stopped < 100000

    _torchrun(["--resume", str(run_dir), "--total-timesteps", str(stopped + 16)], tmp_path / "logs_r", teacher_cache)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "mtkd-rl" and summary["num_timesteps"] == stopped + 16
    assert summary["eval"] is not None and len(summary["eval"]["equal_test_acc"]) == 1
    assert _rank_output(tmp_path / "logs_r", 1) == ""
    assert _only_run_dir(tmp_path / "out") == run_dir
