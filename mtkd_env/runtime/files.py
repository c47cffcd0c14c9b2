"""Files: atomic writes, weights-only torch loading, and output paths checked before any work.

- `atomic_path` / `atomic_write_text` / `torch_save_atomic`: write next to the target and move into
  place only on success, so an interruption never leaves a torn file.
- `load_weights`: `torch.load(weights_only=True)` on the CPU; an unreadable file is a one-line
  `CheckpointError` that says why (empty, not a torch file, or holding pickled objects that are
  never unpickled here) instead of torch's advice to retry with `weights_only=False`.
- `check_output_dir` / `check_output_file`: a `--out`/`--json` that cannot be written is refused
  before a run starts, not after it finished.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from .errors import CheckpointError, ConfigError, first_line

__all__ = ["atomic_path", "atomic_write_text", "torch_save_atomic", "load_weights", "why_unreadable",
           "check_output_dir", "check_output_file"]

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
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


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save_atomic(obj: object, path: PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


_GLOBAL = re.compile(r"\bGLOBAL\s+([A-Za-z_][\w.]*)")
_TORCH_TEXT_TO_DROP = re.compile(r"weights.?only|torch\.load|unsafe|trusted|arbitrary code", re.IGNORECASE)


def why_unreadable(exc: BaseException) -> str:
    """Why torch could not load a file, in one line of our own words.

    The message is built here, never by editing torch's: torch's text (whose wording changes from
    release to release) advises re-running `torch.load` with `weights_only=False`, which is never
    the right advice for a file that holds pickled code. Only the name of a refused GLOBAL, or a
    short detail that says nothing about loading modes, is taken from it."""
    import pickle

    text = str(exc)
    unsafe = _GLOBAL.search(text)
    if unsafe:
        return (f"it holds pickled Python objects (GLOBAL {unsafe.group(1)}), which are never unpickled from a "
                "file; expected tensors in plain containers (a state dict)")
    if isinstance(exc, pickle.UnpicklingError) or _TORCH_TEXT_TO_DROP.search(text):
        return ("it is not a torch file or it is corrupt (a weights-only load refused its contents); expected "
                "tensors in plain containers (a state dict)")
    detail = first_line(exc)[:80]
    if isinstance(exc, (EOFError, RuntimeError)) or "invalid load key" in text:
        return f"it is not a torch file or it is truncated ({detail})"
    return detail


def load_weights(source: Union[PathLike, io.BytesIO], what: str) -> object:
    """`torch.load(source, weights_only=True)` on the CPU; `what` names the file in errors
    (e.g. "teacher checkpoint '/x.pt'"). Raises a one-line `CheckpointError`."""
    import torch

    if not isinstance(source, io.BytesIO):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{what} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
        if path.stat().st_size == 0:
            raise CheckpointError(f"{what} could not be read as a weights-only torch file: it is empty (0 bytes)")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{what} could not be read as a weights-only torch file: {why_unreadable(exc)}") from None


def _writable_ancestor(path: Path, flag: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {str(path)!r}: cannot write into {str(parent)!r} (permission denied)")
            return


def check_output_dir(path: PathLike, flag: str) -> Path:
    """`path` is a folder that exists or can be created; a `ConfigError` naming `flag` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a file; expected a folder (existing or new)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {str(path)!r}: cannot write into this folder (permission denied)")
    else:
        _writable_ancestor(path, flag)
    return path


def check_output_file(path: PathLike, flag: str) -> Path:
    """`path` is a file that can be (over)written; a `ConfigError` naming `flag` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; expected a file path")
    _writable_ancestor(path, flag)
    return path
