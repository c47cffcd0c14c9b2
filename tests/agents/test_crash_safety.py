"""Crash safety, measured (issue 18): `agents.train` killed with SIGKILL at several points resumes
to a run bit-identical (CPU) to an uninterrupted one, or refuses in one line and leaves the run
folder as it was.

The kill points are deterministic: the real CLI runs in a subprocess through a small wrapper that
SIGKILLs its own process at the Nth call of one of the run's writers (after N metrics rows, in the
middle of a metrics row, right after a checkpoint, in the middle of a checkpoint write). One run is
killed and resumed repeatedly, once at each point; a second run is killed before its first
checkpoint, and `--resume` must refuse it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.runs import diff_states, metric_rows

WRAPPER = r'''
import os, signal, sys

point, n = sys.argv[1], int(sys.argv[2])
import torch
import agents.run as run
import agents.tracking as tracking
from mtkd_env.runtime.files import atomic_path

calls = [0]


def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def hit():
    calls[0] += 1
    return calls[0] == n


if point in ("rows", "torn_row"):
    real_write = tracking.JSONLWriter.write

    def write(self, key_values, key_excluded, step=0):
        if point == "torn_row" and hit():
            self.file.write('{"global_step": %d, "step/rew' % step)  # half a row, then the kill
            self.file.flush()
            die()
        real_write(self, key_values, key_excluded, step)
        if point == "rows" and hit():
            die()

    tracking.JSONLWriter.write = write
else:
    real_save = run.torch_save_atomic

    def save(obj, path):
        if point == "mid_checkpoint" and hit():
            with atomic_path(path) as tmp:
                torch.save(obj, tmp)
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
                die()
        real_save(obj, path)
        if point == "after_checkpoint" and hit():
            die()

    run.torch_save_atomic = save

from agents.train import main

sys.exit(main(sys.argv[3:]))
'''

ENV = ["--env", "dataset=synthetic",
       "dataset_kwargs={shape: [1, 8, 8], num_classes: 4, n_train: 128, n_val: 64, n_test: 64}",
       "teachers=[mlp, cnn=random]", "teacher_epochs=2", "max_steps=8", "batch_size=16", "probe_size=32",
       "show_progress=false", "device=cpu"]
TOTAL, SAVE_FREQ = 20, 4
KILLS = [("after_checkpoint", 1), ("torn_row", 3), ("mid_checkpoint", 2), ("rows", 5)]
"""(point, N): killed at the Nth call of that writer in the process (a fresh run, then each resume)."""


def _cli(tmp_path: Path, args, kill=None) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "kill_wrapper.py"
    wrapper.write_text(WRAPPER)
    cmd = [sys.executable, str(wrapper), kill[0], str(kill[1])] if kill else [sys.executable, "-m", "agents.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sigkill_at_every_point_resumes_bit_identical_or_refuses(tmp_path, teacher_cache):
    common = ["--algo", "mtkd-rl", "--total-timesteps", TOTAL, "--save-freq", SAVE_FREQ, "--seed", "3",
              "--eval-episodes", "0", "--wandb", "disabled", "--no-progress", *ENV,
              f"teacher_cache_dir={teacher_cache}"]
    straight = _cli(tmp_path, common + ["--out", tmp_path / "straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    (reference,) = (tmp_path / "straight").iterdir()

    # Killed before its first checkpoint: --resume refuses in one line and changes nothing.
    early = _cli(tmp_path, common + ["--out", tmp_path / "early"], kill=("rows", 2))
    assert early.returncode == -signal.SIGKILL, early.stderr[-3000:]
    (early_dir,) = (tmp_path / "early").iterdir()
    before = _snapshot(early_dir)
    refused = _cli(tmp_path, ["--resume", early_dir])
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: "), refused.stderr[-3000:]
    assert len(refused.stderr.strip().splitlines()) == 1 and "no run found" in refused.stderr
    assert _snapshot(early_dir) == before

    # One run killed at each point in turn, resumed after each kill.
    first = _cli(tmp_path, common + ["--out", tmp_path / "killed"], kill=KILLS[0])
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    for kill in KILLS[1:]:
        got = _cli(tmp_path, ["--resume", run_dir], kill=kill)
        assert got.returncode == -signal.SIGKILL, (kill, got.stderr[-3000:])
        if kill[0] == "torn_row":
            assert not (run_dir / "metrics.jsonl").read_text().endswith("\n")  # the torn tail is there
        if kill[0] == "mid_checkpoint":
            assert list((run_dir / "checkpoint").glob(".state.pt.*.tmp"))  # the half-written copy, not state.pt
    final = _cli(tmp_path, ["--resume", run_dir])
    assert final.returncode == 0, final.stderr[-3000:]

    a = torch.load(reference / "checkpoint/state.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoint/state.pt", weights_only=True)
    assert a["num_timesteps"] == b["num_timesteps"] == TOTAL
    assert diff_states(a, b) == []
    assert metric_rows(run_dir) == metric_rows(reference)
    assert not list(run_dir.rglob(".*.tmp"))  # the resume removed what the kills left
