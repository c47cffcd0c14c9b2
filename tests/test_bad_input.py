"""Bad input on every CLI: one line on stderr naming what was wrong and what was expected, exit 2,
nothing left behind (issue 11, cases 1-12)."""

from __future__ import annotations

import io
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import agents.evaluate as evaluate
import agents.train as train
from agents import api
from baselines.compare import main as compare
from mtkd_env.__main__ import main as episode
from mtkd_env.teachers.cli import main as teachers

# The tiny synthetic env of this module's CLI runs; the `env_args` fixture (tests/conftest.py) makes its --env flags.
SYNTH = {"dataset": "synthetic", "dataset_kwargs": "{shape: [1, 8, 8], num_classes: 4, n_train: 128, n_val: 64, n_test: 64}",
         "teachers": "[mlp, cnn=random, mlp=noisy]", "teacher_epochs": "2", "max_steps": "8", "batch_size": "16",
         "probe_size": "32", "show_progress": "false", "device": "cpu"}


@pytest.fixture(scope="module")
def models(tmp_path_factory, teacher_cache):
    """A trained mtkd-rl and ppo agent on the synthetic env (tiny budgets)."""
    from mtkd_env.config import EnvConfig, parse_overrides

    root = tmp_path_factory.mktemp("models")
    cfg = EnvConfig.from_dict({**parse_overrides([f"{k}={v}" for k, v in SYNTH.items()]),
                               "teacher_cache_dir": teacher_cache})
    mtkd = api.train("mtkd-rl", env_config=cfg, total_timesteps=4, out_dir=str(root), show_progress=False)
    ppo = api.train("ppo", env_config=cfg, total_timesteps=8, out_dir=str(root), show_progress=False,
                    hyperparams={"n_steps": 8, "batch_size": 8, "n_epochs": 1})
    return {"mtkd-rl": mtkd, "ppo": ppo}


def _fails(capsys, cli, argv, *expected) -> str:
    """`cli(argv)` exits 2 with one line on stderr that contains every `expected` text."""
    capsys.readouterr()
    assert cli(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    return err


def _unsafe_member(run_dir: Path, member: str, tmp_path: Path) -> Path:
    """A copy of a model.zip whose `member` is a pickle that would run code (a torch module)."""
    buf = io.BytesIO()
    torch.save({"m": torch.nn.Linear(2, 2)}, buf)
    with zipfile.ZipFile(run_dir / "model.zip") as z:
        items = {n: z.read(n) for n in z.namelist()}
    assert member in items
    items[member] = buf.getvalue()
    out = tmp_path / f"unsafe_{member.replace('.', '_')}.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)
    return out


# --- 1: a dataset that is not on disk -------------------------------------------------------------
def test_missing_dataset(capsys, tmp_path, models):
    out = tmp_path / "out"
    _fails(capsys, train.main, ["--algo", "ppo", "--env", "dataset=cifar100", "--out", out, "--wandb", "disabled"],
           "cifar100: data_dir is not set", "expected <data_dir>/cifar-100-python")
    _fails(capsys, train.main, ["--algo", "ppo", "--env", "dataset=imagefolder", f"data_dir={tmp_path / 'none'}",
                                "--out", out, "--wandb", "disabled"], "imagefolder:", "expected <data_dir>/train/<class>")
    _fails(capsys, evaluate.main, ["--model", models["ppo"], "--env", "dataset=cifar100", "dataset_kwargs={}"],
           "cifar100: data_dir is not set")
    assert not out.exists()


# --- 2: a 0-byte teacher checkpoint ---------------------------------------------------------------
def test_empty_teacher_checkpoint(capsys, tmp_path, env_args):
    empty = tmp_path / "cache" / "empty.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    _fails(capsys, episode, env_args(teachers=f"[mlp=random, cnn={empty}]"),
           f"teacher checkpoint {str(empty)!r} could not be read as a weights-only torch file: it is empty (0 bytes)")
    assert teachers(["list", "--cache-dir", str(empty.parent)]) == 0
    assert "unreadable file: empty.pt (" in capsys.readouterr().out


# --- 3: an unsafe pickle inside model.zip ---------------------------------------------------------
def test_unsafe_pickle_in_model_zip(capsys, tmp_path, models):
    for algo, member in (("ppo", "policy.pth"), ("mtkd-rl", "agent.pth")):
        zipped = _unsafe_member(models[algo], member, tmp_path)
        err = _fails(capsys, evaluate.main, ["--model", zipped, "--episodes", "1"],
                     "holds pickled Python objects (GLOBAL torch.nn.modules.linear.Linear)", "never unpickled")
        assert "weights_only=False" not in err and "weights_only` set to `False" not in err


# --- 4: CUDA asked for but absent -----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys, tmp_path, env_args, models):
    out = tmp_path / "out"
    _fails(capsys, train.main, ["--algo", "mtkd-rl", *env_args(device="cuda"), "--out", out, "--wandb", "disabled"],
           "device 'cuda' was requested but CUDA is not available", "expected device='cpu' or 'auto'")
    _fails(capsys, evaluate.main, ["--model", models["mtkd-rl"], "--env", "device=cuda:1"],
           "device 'cuda:1' was requested but CUDA is not available")
    assert not out.exists()


# --- 5: outputs that cannot be written ------------------------------------------------------------
def test_output_paths_are_checked_before_any_work(capsys, tmp_path, env_args, models):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _fails(capsys, train.main, ["--algo", "mtkd-rl", "--total-timesteps", "2", *env_args(), "--out", a_file,
                                "--wandb", "disabled", "--no-progress"], f"--out {str(a_file)!r} is a file; expected a folder")
    _fails(capsys, compare, ["--policies", "aver", "--seeds", "0", *env_args(), "--out", a_file, "--no-progress"],
           f"--out {str(a_file)!r} is a file; expected a folder")
    _fails(capsys, compare, ["--policies", "aver", "--seeds", "0", *env_args(), "--out", a_file / "sub", "--no-progress"],
           "is a file, not a folder")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    _fails(capsys, evaluate.main, ["--model", models["mtkd-rl"], "--json", a_dir],
           f"--json {str(a_dir)!r} is a folder; expected a file path")
    assert a_file.read_text() == "x" and list(a_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a_file.name, a_dir.name])


# --- 6: negative seeds --------------------------------------------------------------------------
def test_negative_seeds(capsys, tmp_path, env_args, models):
    out = tmp_path / "out"
    _fails(capsys, evaluate.main, ["--model", models["mtkd-rl"], "--seed", "-1"], "--seed: expected an integer >= 0, got -1")
    _fails(capsys, episode, [*env_args(), "--seed", "-1"], "--seed: expected an integer >= 0, got -1")
    _fails(capsys, compare, ["--policies", "aver", "--seeds", "0", "-1", *env_args(), "--out", out, "--no-progress"],
           "--seeds: expected integers >= 0, got -1")
    _fails(capsys, compare, ["--policies", "aver", "--train-seeds", "-3", *env_args(), "--out", out], "--train-seeds")
    err = _fails(capsys, train.main, ["--algo", "ppo", "--seed", "-1", *env_args(), "--out", out, "--wandb", "disabled"],
                 "seed: expected an integer in [0, 4294967295], got -1")
    assert "hyperparameters" not in err
    assert not out.exists()


# --- 7: repeated --env / --policies flags add up ----------------------------------------------------
def test_repeated_flags_merge_or_are_refused(capsys, tmp_path, env_args, models):
    out = tmp_path / "out"
    # The second --env used to replace the first, so batch_size=0 was silently dropped.
    for cli, argv in ((train.main, ["--algo", "mtkd-rl", "--out", out, "--wandb", "disabled"]),
                      (evaluate.main, ["--model", models["mtkd-rl"]]), (episode, [])):
        _fails(capsys, cli, [*argv, *env_args(batch_size=0, max_steps=None), "--env", "max_steps=20"],
               "batch_size: expected an integer >= 1, got 0")
    _fails(capsys, episode, [*env_args(batch_size=8), "--env", "batch_size=4"],
           "--env: batch_size is given twice (8 and 4); give each key once")
    assert not out.exists()
    from baselines.compare import options_from_args

    opts = options_from_args(["--policies", "aver", "--policies", "ebkd,aekd", "--seeds", "0", "--seeds", "3",
                              "--env", "max_steps=5", "--env", "batch_size=8"])
    assert opts.policies == ["aver", "ebkd", "aekd"] and opts.seeds == [0, 3]
    assert (opts.env_config.max_steps, opts.env_config.batch_size) == (5, 8)


# --- 8: two SIGINTs before the first checkpoint -----------------------------------------------------
class _TwoSignals(BaseCallback):
    """A Ctrl-C and a second one right after it (before the run's next safe point)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return True


def test_abort_before_the_first_checkpoint_leaves_no_run_folder(capsys, tmp_path, env_args, monkeypatch):
    real = api.prepare_run
    monkeypatch.setattr(api, "prepare_run", lambda *a, **k: real(*a, callbacks=[_TwoSignals(3)], **k))
    out = tmp_path / "out"
    capsys.readouterr()
    assert train.main(["--algo", "ppo", "--total-timesteps", "64", "--save-freq", "0", *env_args(), "--out", str(out),
                       "--wandb", "disabled", "--no-progress", "--hyperparams", _ppo_file(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "aborted before the first checkpoint: nothing to resume" in err[-1], err
    assert "resumes with" not in "\n".join(err)
    assert not out.exists()  # the half-made run directory (and the --out folder made for it) is gone


def _ppo_file(tmp_path: Path) -> str:
    path = tmp_path / "ppo.yml"
    path.write_text("n_steps: 16\nbatch_size: 8\nn_epochs: 1\n")
    return str(path)


# --- 9: an agent evaluated on an env of another shape ----------------------------------------------
def test_agent_on_another_teacher_pool(capsys, models):
    for algo in ("ppo", "mtkd-rl"):
        err = _fails(capsys, evaluate.main, ["--model", models[algo], "--episodes", "1", "--env", "teachers=[mlp, mlp=noisy]"],
                     f"the {algo} agent was trained on observations", "teachers ['mlp', 'cnn=random', 'mlp=noisy']",
                     "(teachers ['mlp', 'mlp=noisy'])", "expected an env with the teacher pool")
        assert "broadcast" not in err


# --- 10: a comparison whose env cannot be built ------------------------------------------------------
def test_compare_env_failure_leaves_nothing(capsys, tmp_path):
    out = tmp_path / "cmp"
    _fails(capsys, compare, ["--policies", "aver", "--seeds", "0", "--env", "dataset=cifar100", "--out", out,
                             "--no-progress"], "cannot build the env: cifar100: data_dir is not set")
    assert not out.exists()
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)
    _fails(capsys, compare, ["--policies", "aver", "--seeds", "0", "--env", "dataset=cifar100", "--out", kept,
                             "--no-progress"], "cannot build the env")
    assert sorted(p.name for p in kept.iterdir()) == ["notes"]  # a folder that existed is left as it was


# --- 11: advice, ranges and defaults that misled -----------------------------------------------------
def test_misleading_messages_and_silent_settings(capsys, tmp_path, env_args):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    err = _fails(capsys, episode, env_args(teachers=f"[mlp, cnn={junk}]"),
                 "could not be read as a weights-only torch file: it is not a torch file or it is corrupt")
    assert "weights_only" not in err.split("torch file", 1)[1]  # no advice to load it unsafely
    hp = tmp_path / "hp.yml"
    hp.write_text("gamma: 1.5\n")
    out = tmp_path / "out"
    _fails(capsys, train.main, ["--algo", "ppo", "--hyperparams", hp, *env_args(), "--out", out, "--wandb", "disabled"],
           "hyperparameter gamma: expected a number in [0, 1], got 1.5")
    assert not out.exists()
    _fails(capsys, teachers, ["train", "--dataset", "synthetic", "--arch", "tiny_cnn", "--epochs", "1"],
           "the default [150, 180, 210]", "do not fit in --epochs 1", "--milestones")
    capsys.readouterr()
    assert episode(env_args()) == 0  # show_progress=false is in SYNTH
    captured = capsys.readouterr()
    assert "AVER episode" not in captured.err and "final test acc" in captured.out


# --- 12: started as a background job (SIGINT ignored) -----------------------------------------------
class _OneSignal(BaseCallback):
    def _on_step(self) -> bool:
        if self.num_timesteps == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return True


def test_a_run_restores_an_ignored_sigint(tmp_path, synthetic_config):
    """`make test &` starts the suite with SIGINT ignored: the run catches its signal, then hands
    SIGINT back to SIG_IGN (not to Python's default handler)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(api.TrainingInterrupted):
            api.train("mtkd-rl", env_config=synthetic_config(), total_timesteps=12, out_dir=str(tmp_path),
                      callbacks=[_OneSignal()], show_progress=False, save_freq=0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# --- did you mean ------------------------------------------------------------------------------------
def test_unknown_names_suggest_the_close_ones(capsys, tmp_path, env_args):
    out = tmp_path / "out"
    _fails(capsys, train.main, ["--algo", "ppo2", "--out", out], "unknown algo 'ppo2' (did you mean 'ppo'?)")
    _fails(capsys, train.main, ["--algo", "ppo", "--env", "batchsize=8", "--out", out],
           "unknown EnvConfig field(s) ['batchsize'] (did you mean 'batch_size'?)")
    _fails(capsys, train.main, ["--algo", "ppo", "--sed", "3"], "unrecognized arguments: --sed 3 (did you mean '--seed'?)")
    _fails(capsys, train.main, ["--algo", "ppo", "--wandb", "ofline"], "invalid choice: 'ofline'", "(did you mean 'offline'?)")
    _fails(capsys, compare, ["--policies", "aver,eb-kd", "--out", out], "unknown policy 'eb-kd' (did you mean 'ebkd'?)")
    _fails(capsys, episode, env_args(student="tiny_cnnn"), "unknown model 'tiny_cnnn' (did you mean 'tiny_cnn'?)")
    assert not out.exists()


@pytest.mark.parametrize("cli", [train.main, evaluate.main, compare, episode, teachers])
def test_every_cli_has_help(cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["--help"])
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out
