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


@pytest.fixture
def env_args(request, teacher_cache):
    """Factory of the `--env` pairs of the calling test module's `SYNTH` env (its tiny synthetic env as
    KEY=VALUE strings), with `overrides` in place of its own values (None drops one)."""
    def make(**overrides) -> list:
        pairs = {**request.module.SYNTH, "teacher_cache_dir": teacher_cache, **overrides}
        return ["--env", *(f"{k}={v}" for k, v in pairs.items() if v is not None)]

    return make
