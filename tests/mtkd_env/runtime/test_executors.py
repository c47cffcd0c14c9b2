"""`mtkd_env.runtime.executors`: the options' checks, and Ray jobs that run where the driver runs
(its directory, its MTKD_* variables), fail alone and are refused when no node could run them."""

from __future__ import annotations

import os
from pathlib import Path
import sys

import pytest

from mtkd_env.runtime.errors import ConfigError
from mtkd_env.runtime.executors import RAY_INSTALL, ExecutorOptions, execute


def _job(x: int):
    """A job: (2x, the directory it ran in, $MTKD_PROBE); raises for x < 0."""
    if x < 0:
        raise ValueError(f"bad input {x}")
    return 2 * x, os.getcwd(), os.environ.get("MTKD_PROBE")


def _outcomes(*args, **kwargs):
    """{task: (result, error)} of `execute(_job, ...)`."""
    return {task: (result, error) for task, result, error in execute(_job, *args, **kwargs)}


@pytest.mark.parametrize("kwargs, message", [
    ({"address": "auto"}, "--address is an option of --backend ray, got --backend local"),
    ({"ray_num_gpus": 0.5}, "--ray-num-gpus is an option of --backend ray, got --backend local"),
    ({"backend": "dask"}, "--backend: expected one of ['local', 'ray'], got 'dask'"),
    ({"ray_num_cpus": 0.0}, "--ray-num-cpus: expected a number > 0, got 0.0"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        ExecutorOptions(**kwargs)
    assert str(err.value) == message


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError) as err:
        ExecutorOptions(backend="ray")
    assert str(err.value) == f"--backend ray needs Ray, which is not installed: {RAY_INSTALL}"
    assert RAY_INSTALL == "pip install 'mtkd-env[ray]'"


def test_local_backend_runs_every_job_and_keeps_failures_apart():
    outcomes = _outcomes([1, -1, 2])  # worker processes: tests/baselines/compare (--jobs 2)
    assert outcomes[1][0][0] == 2 and outcomes[2][0][0] == 4 and outcomes[1][1] is None
    assert outcomes[-1][0] is None and isinstance(outcomes[-1][1], ValueError)


def test_ray_jobs_run_in_the_driver_directory_and_fail_alone(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTKD_PROBE", "from the driver")
    options = ExecutorOptions(backend="ray", address=ray_cluster["address"])
    outcomes = _outcomes([1, -1, 2], options)
    assert outcomes[1] == ((2, str(tmp_path), "from the driver"), None)
    assert outcomes[2] == ((4, str(tmp_path), "from the driver"), None)
    result, error = outcomes[-1]
    assert result is None and type(error) is ValueError and str(error) == "bad input -1"  # the job's own error
    with pytest.raises(ConfigError, match="--jobs 2: --jobs sets local worker processes"):
        execute(_job, [1], options, workers=2)
    too_big = ExecutorOptions(backend="ray", address=ray_cluster["address"], ray_num_gpus=0.5)
    with pytest.raises(ConfigError) as err:
        list(execute(_job, [1], too_big))
    assert str(err.value).startswith("--ray-num-gpus 0.5: no node of the Ray cluster has that many GPUs (the "
                                     "largest has 0)")


def test_ray_local_address_starts_and_stops_its_own_instance(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mtkd-env[ray]')")
    monkeypatch.chdir(tmp_path)
    # The jobs live in this test module: the Ray this starts must find `tests` however pytest was started.
    repo = str(Path(__file__).resolve().parents[3])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    outcomes = _outcomes([3], ExecutorOptions(backend="ray", address="local"))
    assert outcomes[3][0][:2] == (6, str(tmp_path))
    assert not ray.is_initialized()


def test_local_workers_exit_when_their_parent_is_killed(tmp_path):
    """SIGKILL of a run's process must not leave its workers training students for nobody."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    script = ("from mtkd_env.runtime.executors import execute\n"
              "from tests.runs import record_pid_then_sleep\n"
              "for _ in execute(record_pid_then_sleep, [120] * 4, None, 2): pass\n")
    env = {**os.environ, "PID_DIR": str(tmp_path), "PYTHONPATH": str(repo)}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=repo, env=env)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()

        def alive(pid: int) -> bool:
            try:
                return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return False

        deadline = time.time() + 15
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "workers outlived their killed parent"
    finally:
        parent.kill()
