"""Shared fixtures: a session-wide teacher cache and tiny configs that keep tests fast on 2 CPUs."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from mtkd_env import EnvConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory) -> str:
    """One teacher cache for the whole test session: each tiny teacher is trained once."""
    return str(tmp_path_factory.mktemp("teacher_cache"))


@pytest.fixture
def tiny_config(teacher_cache):
    """Factory of a small digits config: quick teachers (3 epochs), short episodes, no progress bars."""

    def make(**overrides) -> EnvConfig:
        base = dict(dataset="digits", teacher_cache_dir=teacher_cache, teacher_epochs=3, max_steps=12,
                    batch_size=32, show_progress=False, device="cpu")
        base.update(overrides)
        return EnvConfig(**base)

    return make


@pytest.fixture
def synthetic_config(teacher_cache):
    """Factory of a pure-tensor config (generated 1x8x8 data, 4 classes) for the cheapest tests."""

    def make(**overrides) -> EnvConfig:
        base = dict(dataset="synthetic",
                    dataset_kwargs={"shape": [1, 8, 8], "num_classes": 4, "n_train": 128, "n_val": 64,
                                    "n_test": 64},
                    teachers=["mlp", "cnn=random", "mlp=noisy"], student="tiny_cnn",
                    teacher_cache_dir=teacher_cache, teacher_epochs=2, max_steps=8, batch_size=16,
                    probe_size=32, show_progress=False, device="cpu")
        base.update(overrides)
        return EnvConfig(**base)

    return make


TINY_GLYPHS = {"n_train": 320, "n_val": 64, "n_test": 128, "size": 8}
"""Glyphs small enough for tests: 8x8 images, 320 / 64 / 128 per split (a group of 5 classes holds 80 training images, over one batch of 64)."""

TINY_SCENES = {"n_train": 96, "n_val": 32, "n_test": 32, "size": 16}
"""Generated scenes small enough for tests: 16x16 images, 96 / 32 / 32 per split."""


@pytest.fixture
def scenario_config(teacher_cache):
    """Factory of a scenario of the suite on tiny glyphs or scenes (2-epoch teachers, 4-step episodes)."""

    def make(name: str, **overrides) -> EnvConfig:
        from mtkd_env.scenarios import scenario_settings

        tiny = TINY_SCENES if scenario_settings(name)["dataset"] in ("scenes", "scene_boxes") else TINY_GLYPHS
        base = dict(scenario=name, dataset_kwargs=dict(tiny), teacher_cache_dir=teacher_cache,
                    teacher_epochs=2, max_steps=4, batch_size=32, probe_size=32, eval_batch_size=128,
                    show_progress=False, device="cpu")
        base.update(overrides)
        return EnvConfig(**base)

    return make


@pytest.fixture
def env_args(request, teacher_cache):
    """Factory of the `--env` pairs of the calling test module's `SYNTH` env (its tiny synthetic env as
    KEY=VALUE strings), with `overrides` in place of its own values (None drops one)."""
    def make(**overrides) -> list:
        pairs = {**request.module.SYNTH, "teacher_cache_dir": teacher_cache, **overrides}
        return ["--env", *(f"{k}={v}" for k, v in pairs.items() if v is not None)]

    return make


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A 2-CPU Ray cluster started with `ray start --head` (as a user would) in a folder of its own,
    with this checkout on its workers' path and none of this process's MTKD_* variables; stopped
    after the session. {"address": HOST:PORT, "cwd": the cluster's folder}."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mtkd-env[ray]')")
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    home = tmp_path_factory.mktemp("ray_cluster_cwd")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 characters
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # Ray >= 2.5x: no token between this driver and the test cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTKD_")}
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in [env.get("PYTHONPATH")] if p])
    log = Path(temp) / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                                 "--disable-usage-stats", f"--temp-dir={temp}"], cwd=home, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start --head failed:\n" + log.read_text()[-2000:])
            time.sleep(0.2)
        yield {"address": f"127.0.0.1:{port}", "cwd": home}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        if auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth
