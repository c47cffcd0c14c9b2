"""`baselines.compare --shard I/N` + `--merge` equal one unsharded run; torchrun equals one process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baselines.compare import CompareOptions, job_list, main, parse_shard, run_compare, shard_jobs

POLICIES = "aver,ebkd,aekd"
TIMING = ("policy_s", "steps_per_s")
REPO = Path(__file__).resolve().parents[3]


def _rows(out: Path):
    with (out / "results.csv").open() as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def _table(out: Path) -> list:
    """The summary table without its steps/s column (wall time differs between runs)."""
    return [line.rsplit("|", 2)[0] for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, teacher_cache):
    """One unsharded comparison and the same one in 4 shards (6 jobs: slices of 1, 2, 1, 2 runs)."""
    root = tmp_path_factory.mktemp("shards")
    from mtkd_env import EnvConfig

    cfg = EnvConfig(dataset="synthetic", dataset_kwargs={"shape": [1, 8, 8], "num_classes": 4, "n_train": 128,
                                                         "n_val": 64, "n_test": 64},
                    teachers=["mlp", "cnn=random", "mlp=noisy"], student="tiny_cnn", teacher_cache_dir=teacher_cache,
                    teacher_epochs=2, max_steps=8, batch_size=16, probe_size=32, show_progress=False, device="cpu")
    config = root / "env.json"
    config.write_text(json.dumps(cfg.to_dict()))
    base = ["--policies", POLICIES, "--seeds", "0", "1", "--env-config", str(config), "--eval-every", "4",
            "--no-progress"]
    assert main(base + ["--out", str(root / "full")]) == 0
    for i in range(1, 5):
        assert main(base + ["--out", str(root / f"s{i}"), "--shard", f"{i}/4"]) == 0
    return root, base


def test_shard_slices_are_contiguous_and_cover_the_job_list():
    jobs = job_list(["a", "b", "c"], [0, 1])
    assert jobs[:3] == [("a", 0), ("b", 0), ("c", 0)]            # seed-major
    parts = [shard_jobs(jobs, (i, 4)) for i in range(1, 5)]
    assert [len(p) for p in parts] == [1, 2, 1, 2] and sum(parts, []) == jobs
    assert [len(shard_jobs(jobs, (i, 8))) for i in range(1, 9)] == [0, 1, 1, 1, 0, 1, 1, 1]
    assert parse_shard(" 2 / 4 ") == (2, 4)


def test_merged_shards_give_the_unsharded_summary(sharded, capsys):
    root, _ = sharded
    assert [len(_rows(root / f"s{i}")) for i in range(1, 5)] == [1, 2, 1, 2]
    assert main(["--merge"] + [str(root / f"s{i}") for i in range(1, 5)] + ["--out", str(root / "merged")]) == 0
    merged = root / "merged"
    for name in ("results.csv", "summary.md", "curves.png", "weights.png"):
        assert (merged / name).stat().st_size > 0, name
    assert _rows(merged) == _rows(root / "full")                  # same rows, same (seed-major) order
    assert _table(merged) == _table(root / "full")                # same means, deltas, p-values, ranks
    assert len(list((merged / "runs").glob("*.json"))) == 6
    for run in (root / "full" / "runs").iterdir():
        assert json.loads((merged / "runs" / run.name).read_text())["curve_val_acc"] == \
            json.loads(run.read_text())["curve_val_acc"]
    summary = (merged / "summary.md").read_text()
    assert "merged from 4 folder(s)" in summary and "shard 3/4 of policies" in summary

    # Overlapping inputs are de-duplicated; a previous merge folder can be merged into again.
    capsys.readouterr()
    assert main(["--merge", str(root / "full")] + [str(root / f"s{i}") for i in range(1, 5)] +
                ["--out", str(merged)]) == 0
    assert _rows(merged) == _rows(root / "full") and "warning" not in capsys.readouterr().err

    # Rerunning a shard resumes: nothing runs again.
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "s2" / "runs").iterdir()}
    _, base = sharded
    assert main(base + ["--out", str(root / "s2"), "--shard", "2/4"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "s2" / "runs").iterdir()} == stamps


def _error(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_merge_refuses_incomplete_or_inconsistent_folders(sharded, tmp_path, capsys):
    root, base = sharded
    s = [str(root / f"s{i}") for i in range(1, 5)]
    out = str(tmp_path / "m")
    err = _error(capsys, "--merge", s[0], s[1], s[3], "--out", out)
    assert "1 of 6 runs are missing (aver seed 1)" in err and "shard(s) 3/4" in err
    assert not Path(out).exists()

    assert main(base[:-3] + ["--eval-every", "2", "--no-progress", "--out", str(tmp_path / "e2"),
                             "--shard", "3/4"]) == 0
    err = _error(capsys, "--merge", s[0], s[1], str(tmp_path / "e2"), s[3], "--out", out)
    assert "made with other settings (eval_every: 4 -> 2)" in err

    other = tmp_path / "s3_other_teacher"
    shutil.copytree(s[2], other)
    meta = json.loads((other / "compare.json").read_text())
    meta["env_info"]["teacher_fingerprints"][1] = "0" * 16         # as if trained apart on another machine
    (other / "compare.json").write_text(json.dumps(meta))
    err = _error(capsys, "--merge", s[0], s[1], str(other), s[3], "--out", out)
    assert "teacher 'cnn=random' has other weights" in err

    assert "shards of different job lists (shard count 4 -> 2)" in _error(
        capsys, "--merge", s[0], str(root / "full"), *_two_shards(base, tmp_path), "--out", out)
    assert "--merge takes only --out" in _error(capsys, "--merge", s[0], "--seeds", "3", "--out", out)
    assert "is one of the --merge folders" in _error(capsys, "--merge", s[0], s[1], "--out", s[1])
    assert "not a baselines.compare output folder" in _error(capsys, "--merge", str(tmp_path), "--out", out)
    err = _error(capsys, *base, "--out", s[0], "--shard", "2/4")
    assert "holds the rows of shard 1/4" in err and "its own --out" in err


def _two_shards(base, tmp_path):
    """Shard 1/2 of the same job list (3 runs): settings agree, the shard count does not."""
    out = tmp_path / "half1"
    assert main(base + ["--out", str(out), "--shard", "1/2"]) == 0
    return [str(out)]


@pytest.mark.parametrize("value", ["0/4", "5/4", "1/0", "2", "a/b", "-1/3"])
def test_bad_shard_values_exit_2(value, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["--policies", "aver", f"--shard={value}", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shard: expected I/N with 1 <= I <= N (1-based" in err
    assert repr(value) in err and not out.exists()


# --- RL agents: trained once, shared by every shard ----------------------------------------------
class _Preference:
    algo = "fixed-rl"
    env_overrides: dict = {}

    def __init__(self, pref):
        self.pref = pref

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        return np.asarray(self.pref, dtype=np.float32), state


@pytest.fixture
def fake_agents_api(monkeypatch):
    trained = []

    def train(algo, *, env_config, seed=0, out_dir="runs", **_):
        trained.append((algo, seed))
        run = Path(out_dir) / f"{algo}_{seed}"
        run.mkdir(parents=True)
        (run / "policy.json").write_text(json.dumps([1.0, -1.0, -1.0] if seed % 2 == 0 else [-1.0, 1.0, -1.0]))
        return run

    def load_policy(path):
        return _Preference(json.loads((Path(path) / "policy.json").read_text()))

    from agents import api

    monkeypatch.setattr(api, "ALGOS", ("fixed-rl",))
    monkeypatch.setattr(api, "train", train)
    monkeypatch.setattr(api, "load_policy", load_policy)
    return trained


def test_rl_shards_load_the_agents_trained_once(fake_agents_api, synthetic_config, tmp_path, capsys):
    opts = dict(policies=["aver", "fixed-rl"], seeds=[0, 1], env_config=synthetic_config(), eval_every=4,
                train_seeds=[10], progress=False)
    with pytest.raises(ValueError, match=r"--shard with RL policies \['fixed-rl'\] needs --agent-dir"):
        run_compare(CompareOptions(**opts, out=str(tmp_path / "s1"), shard="1/2"))
    assert run_compare(CompareOptions(**opts, out=str(tmp_path / "agents"), train_only=True)) == []
    assert fake_agents_api == [("fixed-rl", 10)] and not (tmp_path / "agents" / "results.csv").exists()
    for i in (1, 2):
        run_compare(CompareOptions(**opts, out=str(tmp_path / f"s{i}"), shard=f"{i}/2",
                                   agent_dir=str(tmp_path / "agents")))
    assert fake_agents_api == [("fixed-rl", 10)]                  # shards never train
    assert main(["--merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 0
    rows = _rows(tmp_path / "m")
    assert [(r["policy"], r["seed"], r["agent_seed"]) for r in rows] == [
        ("aver", "0", ""), ("fixed-rl", "0", "10"), ("aver", "1", ""), ("fixed-rl", "1", "10")]
    softmax_of_pref = np.exp(2) / (np.exp(2) + 2 * np.exp(-2))      # (1, -1, -1) at action_temperature 0.5
    assert float(rows[1]["w_logit[mlp]"]) == pytest.approx(softmax_of_pref, abs=1e-5)

    # A shard that evaluated other agent files (retrained in between) cannot be merged.
    meta_path = tmp_path / "s2" / "compare.json"
    meta = json.loads(meta_path.read_text())
    meta["agents"]["fixed-rl"]["10"] = "f" * 16
    meta_path.write_text(json.dumps(meta))
    err = _error(capsys, "--merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m2"))
    assert "the fixed-rl agent of train seed 10 has other files" in err


# --- torchrun ----------------------------------------------------------------------------------
def test_torchrun_needs_one_job_and_formula_policies(monkeypatch, fake_agents_api, tmp_path, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = _error(capsys, "--policies", "aver", "--jobs", "2", "--out", str(tmp_path / "x"), "--no-progress")
    assert "under torchrun every rank runs the same episodes" in err and "--jobs must be 1, got 2" in err
    err = _error(capsys, "--policies", "aver,fixed-rl", "--out", str(tmp_path / "x"), "--no-progress")
    assert "formula policies only" in err and not (tmp_path / "x").exists()


def test_torchrun_two_ranks_equal_one_process_and_only_rank0_writes(synthetic_config, tmp_path):
    # No BatchNorm (per-rank BN statistics differ from single-process ones): the same global batch
    # then gives the same distillation up to float tolerance.
    cfg = synthetic_config(student="mlp", feature_kd=False)
    config = tmp_path / "env.json"
    config.write_text(json.dumps(cfg.to_dict()))
    args = ["--policies", "aver,ebkd", "--seeds", "0", "--env-config", str(config), "--eval-every", "4",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0       # also trains the teachers into the cache
    for r in (0, 1):
        (tmp_path / f"rank{r}").mkdir()
    # Each rank runs in its own folder with the same relative --out: whatever a rank writes lands there.
    script = f"cd {tmp_path}/rank$RANK && exec {sys.executable} -m baselines.compare {' '.join(args)} --out cmp " \
             f"> stdout.txt 2> stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO)] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--no-python", "sh", "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, (proc.stderr[-2000:], (tmp_path / "rank0" / "stderr.txt").read_text()[-2000:])
    rank1 = sorted(p.name for p in (tmp_path / "rank1").rglob("*"))
    assert rank1 == ["stderr.txt", "stdout.txt"]
    assert (tmp_path / "rank1" / "stdout.txt").read_text() == (tmp_path / "rank1" / "stderr.txt").read_text() == ""
    assert "| aver |" in (tmp_path / "rank0" / "stdout.txt").read_text()
    two = tmp_path / "rank0" / "cmp"
    for name in ("results.csv", "summary.md", "curves.png", "weights.png"):
        assert (two / name).is_file(), name
    one_rows, two_rows = _rows(tmp_path / "one"), _rows(two)
    assert [(r["policy"], r["test_acc"], r["val_acc"], r["best_val_acc"]) for r in two_rows] == \
        [(r["policy"], r["test_acc"], r["val_acc"], r["best_val_acc"]) for r in one_rows]
    for a, b in zip(one_rows, two_rows):
        weights = [k for k in a if k.startswith("w_")]
        assert [float(b[k]) for k in weights] == pytest.approx([float(a[k]) for k in weights], abs=1e-4)
    for policy in ("aver", "ebkd"):
        curve_one = json.loads((tmp_path / "one" / "runs" / f"{policy}__seed0.json").read_text())
        curve_two = json.loads((two / "runs" / f"{policy}__seed0.json").read_text())
        assert curve_two["curve_val_acc"] == curve_one["curve_val_acc"]
        np.testing.assert_allclose(curve_two["window_w_logit"], curve_one["window_w_logit"], atol=1e-5)
