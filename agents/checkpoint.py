"""What a run directory holds and how its checkpoint is read: file names, the checkpoint format,
global RNG states, and the per-rank data-loader state of a torchrun run."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
import yaml

from mtkd_env.config import ConfigError
from mtkd_env.runtime.files import load_weights

__all__ = ["CONFIG_NAME", "CHECKPOINT", "SUMMARY_NAME", "FORMAT", "capture_rng", "restore_rng", "load_run_config",
           "read_run", "loader_overrides", "rank_agent_state"]

CONFIG_NAME = "config.yaml"
CHECKPOINT = "checkpoint/state.pt"
SUMMARY_NAME = "summary.json"
FORMAT = 1


def capture_rng() -> dict:
    """Global python, numpy and torch RNG states in a `weights_only`-loadable form."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                         "pos": int(np_state["state"]["pos"])}
    out = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                         "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a round trip through torch.save keeps them, lists are converted.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_run_config(run_dir: Path) -> dict:
    """The `config.yaml` of a run, or a one-line `ConfigError` if `run_dir` holds no run."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no run found (expected {CONFIG_NAME} and {CHECKPOINT} "
                          "written by agents.train)")
    try:
        data = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--resume {str(run_dir)!r}: {CONFIG_NAME} is not valid YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not {"algo", "env", "hyperparams", "run"} <= set(data):
        raise ConfigError(f"--resume {str(run_dir)!r}: {CONFIG_NAME} lacks algo/env/hyperparams/run entries")
    return data


def read_run(run_dir: Path) -> tuple:
    """(config, checkpoint state) of a run directory, or a one-line `ConfigError`."""
    config = load_run_config(run_dir)
    state = load_weights(run_dir / CHECKPOINT, f"checkpoint {str(run_dir / CHECKPOINT)!r}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"--resume {str(run_dir)!r}: {CHECKPOINT} is not a format-{FORMAT} checkpoint of "
                          f"algo {config['algo']!r}")
    return config, state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return type(a) is type(b) and a == b


def loader_overrides(loaders: List[dict]) -> List[dict]:
    """Per rank, the entries of its data-loader state that differ from rank 0's. The permutation
    and position are shared by design; what differs is per-rank randomness such as the
    augmentation generator, so the checkpoint stays small however many ranks there are."""
    return [{k: v for k, v in loader.items() if not _same(v, loaders[0].get(k))} for loader in loaders]


def rank_agent_state(state: dict, rank: int, world_size: int) -> dict:
    """The checkpoint's agent state (rank 0's env episode) with this rank's data-loader state."""
    info = state.get("dist", {"world_size": 1, "loader_overrides": [{}]})
    if int(info["world_size"]) != world_size or len(info["loader_overrides"]) != world_size:
        raise ConfigError(f"checkpoint: written with world size {info['world_size']}, this launch has world size "
                          f"{world_size}")
    agent = dict(state["agent"])
    override = info["loader_overrides"][rank]
    if override:
        env, engine = dict(agent["env"]), dict(agent["env"]["engine"])
        engine["loader"] = {**engine["loader"], **override}
        env["engine"], agent["env"] = engine, env
    return agent
