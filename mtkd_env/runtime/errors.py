"""One error contract: `UserError` is bad input (a config value, a file, a name); every CLI prints
its first line and exits 2 (`mtkd_env.runtime.cli`). Anything else is a bug and keeps its traceback.

The project's error types all derive from it: `ConfigError`, `CheckpointError`,
`mtkd_env.data.disk_data.DatasetNotFoundError`, `mtkd_env.models.imagenet.WeightsNotFoundError`,
`baselines.compare.CompareError`. `unknown_name` words "unknown X" errors with Gymnasium-style
"did you mean" suggestions. No torch here: `import mtkd_env` loads this module.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Iterable, Sequence

__all__ = ["UserError", "ConfigError", "CheckpointError", "USER_OS_ERRORS", "is_user_error", "first_line", "did_you_mean", "short_repr",
           "unknown_name"]


class UserError(Exception):
    """Bad input from the user; the message says what was wrong and what was expected, on one line."""


class ConfigError(UserError, ValueError):
    """A configuration value was missing, unknown, of the wrong type or out of range."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or model file is missing, unreadable or belongs to another model/dataset."""


USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OS errors that, in a CLI, come from a path the user gave (the CLIs check their outputs up front;
these catch what remains, e.g. a folder that cannot be written)."""


def is_user_error(exc: BaseException) -> bool:
    """Bad input, not a bug: a `UserError` or one of `USER_OS_ERRORS`."""
    return isinstance(exc, (UserError,) + USER_OS_ERRORS)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of `exc`'s message, or its type name when the message is empty
    (e.g. the `EOFError` of a 0-byte file)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def did_you_mean(names: Sequence[object], known: Iterable[object]) -> str:
    """" (did you mean 'x'?)" for names close to a known one (difflib, as Gymnasium's registry), else ""."""
    candidates = [str(k) for k in known]
    hints = []
    for name in names:
        close = difflib.get_close_matches(str(name), candidates, n=1, cutoff=0.6)
        if close:
            hints.append((str(name), close[0]))
    if not hints:
        return ""
    if len(names) == 1:
        return f" (did you mean {hints[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{good!r} for {bad!r}" for bad, good in hints) + "?)"


def unknown_name(kind: str, name: object, known: Iterable[object], *, plural: str = "") -> ConfigError:
    """`ConfigError("unknown {kind} 'x' (did you mean 'y'?); known {plural}: [...]")`."""
    known = sorted(str(k) for k in known)
    return ConfigError(f"unknown {kind} {name!r}{did_you_mean([name], known)}; known {plural or kind + 's'}: {known}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 4, 40, 40


def short_repr(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to at most `limit` characters; nested containers are shortened while they are
    formatted (`reprlib`), so a huge or deeply nested value costs no more than a small one."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
