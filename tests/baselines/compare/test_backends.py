"""`baselines.compare --backend ray`: the same rows as the local backend, and its bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from baselines.compare import main

TIMING = ("policy_s", "steps_per_s")


def _rows(out: Path):
    """results.csv by (policy, seed), without the wall-time columns."""
    with (out / "results.csv").open() as fh:
        return {(r["policy"], r["seed"]): {k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)}


def _curves(out: Path):
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if not k.endswith("_s")}
            for p in (out / "runs").iterdir()}


def test_ray_backend_gives_the_local_backend_rows(ray_cluster, synthetic_config, tmp_path, monkeypatch):
    # The teacher cache is relative to the driver's folder: the Ray jobs must find it there too
    # (in their own folder they would train and cache the teachers again).
    monkeypatch.chdir(tmp_path)
    cfg = synthetic_config(teacher_cache_dir="teachers")
    Path("env.json").write_text(json.dumps(cfg.to_dict()))
    argv = ["--policies", "aver,best", "--seeds", "0", "1", "--env-config", "env.json", "--eval-every", "4",
            "--no-progress"]
    assert main(argv + ["--out", "local"]) == 0
    assert main(argv + ["--out", "ray", "--backend", "ray", "--address", ray_cluster["address"]]) == 0
    local, ray = _rows(Path("local")), _rows(Path("ray"))
    assert sorted(local) == [("aver", "0"), ("aver", "1"), ("best", "0"), ("best", "1")]
    assert ray == local and _curves(Path("ray")) == _curves(Path("local"))
    assert local[("aver", "0")] != local[("best", "0")]  # the rows tell the policies apart
    assert not any(ray_cluster["cwd"].iterdir())  # the jobs wrote nothing in the cluster's own folder


@pytest.mark.parametrize("args, message", [
    (["--backend", "rya"], "argument --backend: invalid choice: 'rya' (choose from 'local', 'ray') (did you mean "
                           "'ray'?)"),
    (["--address", "auto"], "--address is an option of --backend ray, got --backend local"),
    (["--ray-num-gpus", "0.25"], "--ray-num-gpus is an option of --backend ray, got --backend local"),
    (["--backend", "ray", "--ray-num-cpus", "0"], "--ray-num-cpus: expected a number > 0, got 0.0"),
    (["--backend", "ray", "--jobs", "2"], "--jobs 2: --jobs sets local worker processes; with --backend ray the "
                                          "cluster and --ray-num-cpus/--ray-num-gpus decide how many runs go at once"),
    (["--backend", "ray", "NO_RAY"], "--backend ray needs Ray, which is not installed: pip install 'mtkd-env[ray]'"),
])
def test_bad_backend_input_exits_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    if "NO_RAY" in args:
        args = [a for a in args if a != "NO_RAY"]
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    elif "--jobs" in args:  # checked once the options hold --backend ray, which needs Ray
        pytest.importorskip("ray", reason="Ray is not installed (pip install 'mtkd-env[ray]')")
    out = tmp_path / "x"
    assert main(["--policies", "aver", "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"error: {message}" + (" (see python -m baselines.compare --help)"
                                                       if "invalid choice" in message else "")]
    assert not out.exists()
