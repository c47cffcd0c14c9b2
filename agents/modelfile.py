"""Model files: one zip per trained agent, readable without unpickling anything.

Every algorithm saves a zip that holds `mtkd_meta.json` (algo, the env config it was trained on,
the env overrides its policy needs, observation normalisation, hyperparameters, spaces) next to
its weights. SB3 models are SB3's own zip format plus that file, so `PPO.load("model.zip")` still
works; this project loads them pickle-free (rebuild from the meta, then `set_parameters`, whose
tensors are read with `weights_only=True`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import torch

from mtkd_env.config import ConfigError

__all__ = ["META_NAME", "MODEL_NAME", "add_meta", "read_meta", "read_torch_member", "atomic_path",
           "atomic_write_text", "torch_save_atomic", "torch_load"]

META_NAME = "mtkd_meta.json"
MODEL_NAME = "model.zip"


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save_atomic(obj: object, path: Union[str, Path]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: Union[str, Path, io.BytesIO], what: str) -> object:
    """`torch.load(weights_only=True)` on the CPU; a one-line `ConfigError` if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{what} could not be read as a weights-only torch file: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def add_meta(zip_path: Union[str, Path], meta: dict) -> None:
    """Append `mtkd_meta.json` to an existing zip (SB3's loader ignores unknown members)."""
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr(META_NAME, json.dumps(meta, indent=1, sort_keys=True))


def read_meta(path: Union[str, Path]) -> dict:
    """The metadata of a model zip; a one-line `ConfigError` if `path` is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist (expected a run directory or its model.zip)")
    try:
        with zipfile.ZipFile(path) as archive:
            if META_NAME not in archive.namelist():
                raise ConfigError(f"model file {str(path)!r} has no {META_NAME}; expected a model.zip written by "
                                  "agents.train")
            return json.loads(archive.read(META_NAME))
    except zipfile.BadZipFile:
        raise ConfigError(f"model file {str(path)!r} is not a zip file (expected a model.zip written by "
                          "agents.train)") from None


def read_torch_member(path: Union[str, Path], member: str) -> object:
    """A weights-only torch object stored as `member` inside the zip at `path`."""
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise ConfigError(f"model file {str(path)!r} has no {member!r}")
        data = io.BytesIO(archive.read(member))
    return torch_load(data, f"{member} in {str(path)!r}")
