"""`python -m agents.train` / `agents.evaluate`: bad input exits 2 with one line and writes nothing;
a real run is stopped by SIGTERM, resumed from the command line and ends with the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agents.evaluate as evaluate
import agents.train as train

ROOT = Path(__file__).resolve().parents[2]
SYNTH = ["dataset=synthetic", "dataset_kwargs={shape: [1, 8, 8], num_classes: 4, n_train: 128, n_val: 64, n_test: 64}",
         "teachers=[mlp, cnn=random, mlp=noisy]", "teacher_epochs=2", "max_steps=8", "batch_size=16", "probe_size=32",
         "show_progress=false", "device=cpu"]


def _env_args(teacher_cache: str) -> list:
    return ["--env", *SYNTH, f"teacher_cache_dir={teacher_cache}"]


@pytest.mark.parametrize("args, message", [
    (["--algo", "dqn"], "unknown algo 'dqn'"),
    (["--algo", "ppo", "--env", "epochs=many"], "epochs: expected float"),
    (["--algo", "ppo", "--env", "no_such_field=1"], "unknown EnvConfig field(s) ['no_such_field']"),
    (["--algo", "ppo", "--hyperparams", "HP"], "unknown ppo hyperparameter(s) ['n_step']"),
    (["--algo", "ppo", "--env-config", "CFG"], "unknown EnvConfig field(s) ['teacher']"),
    (["--resume", "EMPTY"], "no run found"),
    (["--resume", "EMPTY", "--seed", "3"], "--seed cannot change it"),
    (["--algo", "ppo", "--total-timesteps", "0"], "total_timesteps: expected an integer >= 1"),
    (["--algo", "ppo", "--wandb", "sometimes"], "argument --wandb: invalid choice"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, capsys, teacher_cache):
    (tmp_path / "hp.yml").write_text("n_step: 5\n")
    (tmp_path / "cfg.yml").write_text("teacher: [mlp]\n")
    (tmp_path / "empty").mkdir()
    subs = {"HP": str(tmp_path / "hp.yml"), "CFG": str(tmp_path / "cfg.yml"), "EMPTY": str(tmp_path / "empty")}
    argv = [subs.get(a, a) for a in args] + ["--out", str(tmp_path / "out"), "--wandb", "disabled"] * (
        "--resume" not in args and "--wandb" not in args)
    with pytest.raises(SystemExit) as exc:
        sys.exit(train.main(argv + ([] if "--resume" in args or "--env" in args else _env_args(teacher_cache))))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists() and list((tmp_path / "empty").iterdir()) == []


def test_evaluate_cli(tmp_path, capsys, teacher_cache):
    assert train.main(["--algo", "mtkd-rl", "--total-timesteps", "8", "--out", str(tmp_path), "--wandb", "disabled",
                       "--eval-episodes", "0", "--no-progress", *_env_args(teacher_cache)]) == 0
    run_dir = next(tmp_path.iterdir())
    capsys.readouterr()
    assert evaluate.main(["--model", str(run_dir / "model.zip"), "--episodes", "2", "--seed", "5", "--aver",
                          "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "mtkd-rl" in out and "trained policy" in out and "equal weights (AVER)" in out
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [r["seed"] for r in rows["policy"]] == [5, 6] == [r["seed"] for r in rows["aver"]]
    assert evaluate.main(["--model", str(tmp_path / "nothing"), "--episodes", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_sigterm_then_resume_prints_summary(tmp_path, teacher_cache):
    """The real entry point in a subprocess: SIGTERM saves a checkpoint (exit 143), --resume finishes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "agents.train", "--algo", "mtkd-rl-pg", "--total-timesteps", "240", "--out",
           str(tmp_path), "--no-progress", "--eval-episodes", "1", "--save-freq", "0", *_env_args(teacher_cache)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("*/metrics.jsonl"))
        if found and found[0].stat().st_size > 0:
            metrics = found[0]
            break
        time.sleep(0.2)
    assert metrics is not None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "--resume" in err
    run_dir = metrics.parent
    assert (run_dir / "checkpoint/state.pt").is_file() and not (run_dir / "summary.json").exists()

    done = subprocess.run([sys.executable, "-m", "agents.train", "--resume", str(run_dir), "--no-progress"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trained policy" in done.stdout and "equal weights (AVER)" in done.stdout
    assert "mean weight per teacher" in done.stdout and "mlp=noisy" in done.stdout
    assert json.loads((run_dir / "summary.json").read_text())["num_timesteps"] == 240
