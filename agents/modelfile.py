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
import zipfile
from pathlib import Path
from typing import Union

from mtkd_env.runtime.errors import CheckpointError
from mtkd_env.runtime.files import load_weights

__all__ = ["META_NAME", "MODEL_NAME", "add_meta", "read_meta", "read_torch_member"]

META_NAME = "mtkd_meta.json"
MODEL_NAME = "model.zip"


def add_meta(zip_path: Union[str, Path], meta: dict) -> None:
    """Append `mtkd_meta.json` to an existing zip (SB3's loader ignores unknown members)."""
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr(META_NAME, json.dumps(meta, indent=1, sort_keys=True))


def read_meta(path: Union[str, Path]) -> dict:
    """The metadata of a model zip; a one-line `CheckpointError` if `path` is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {str(path)!r} does not exist (expected a run directory or its model.zip)")
    try:
        with zipfile.ZipFile(path) as archive:
            if META_NAME not in archive.namelist():
                raise CheckpointError(f"model file {str(path)!r} has no {META_NAME}; expected a model.zip written by "
                                      "agents.train")
            return json.loads(archive.read(META_NAME))
    except (zipfile.BadZipFile, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"model file {str(path)!r} is not a zip file with a valid {META_NAME} (expected a "
                              "model.zip written by agents.train)") from None


def read_torch_member(path: Union[str, Path], member: str) -> object:
    """A weights-only torch object stored as `member` inside the zip at `path`."""
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise CheckpointError(f"model file {str(path)!r} has no {member!r}")
        data = io.BytesIO(archive.read(member))
    return load_weights(data, f"{member} in {str(path)!r}")
