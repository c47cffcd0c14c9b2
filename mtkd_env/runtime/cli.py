"""The one CLI wrapper: bad input becomes one line on stderr and exit code 2, everywhere.

    def main(argv=None) -> int:
        return run_cli(_main, argv)          # _main(argv) parses with `ArgumentParser` and runs

`run_cli` applies the thread default (`resources.configure_threads`), runs the body and maps

- `UserError` (`ConfigError`, `CheckpointError`, dataset/weights not found, `CompareError`, argument
  errors) and the OS errors of user-given paths (`errors.USER_OS_ERRORS`) -> "error: <first line>", exit 2;
- `RankFailed` (another torchrun rank failed; that rank shows why) -> its line, exit 1;
- KeyboardInterrupt -> "interrupted", exit 130;

and always leaves the torchrun process group together. Under torchrun only rank 0 prints; every
rank returns the same status. Any other exception is a bug: it propagates with its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence

from .collective import RankFailed, launch_rank, leave
from .errors import UserError, did_you_mean, first_line, is_user_error
from .resources import configure_threads

__all__ = ["ArgumentParser", "UsageError", "run_cli", "describe_error", "say", "add_env_flags", "env_config_data", "env_config_from",
           "given_flags", "int_at_least"]

class UsageError(UserError):
    """A command-line argument was malformed or unknown."""


def say(*args, **kwargs) -> None:
    """`print` on rank 0 only (under torchrun every rank runs the same CLI)."""
    if launch_rank() == 0:
        print(*args, **kwargs)


def describe_error(exc: BaseException) -> str:
    """One line: the message of a `UserError`, "<reason>: '<path>'" for an OS error."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {str(exc.filename)!r}"
    return first_line(exc)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are a one-line `UsageError` (with "did you mean" for unknown flags and
    choices) instead of usage text and `sys.exit(2)`; `run_cli` prints it."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message}{self._suggestion(message)} (see {self.prog} --help)")

    def _suggestion(self, message: str) -> str:
        if message.startswith("unrecognized arguments:"):
            flags = [t.split("=", 1)[0] for t in message.split(":", 1)[1].split() if t.startswith("--")]
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            return did_you_mean(flags, known) if flags else ""
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            return did_you_mean([match.group(1)], re.findall(r"'([^']*)'", match.group(2)))
        return ""


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type=` for an integer flag >= `minimum`: a bad value is the parser's one-line
    error ("argument --batch: expected an integer >= 1, got 0"), before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def run_cli(body: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
            *, workers: int = 1) -> int:
    """Run a CLI `body(argv) -> exit code` under the error contract of this module."""
    main_rank = launch_rank() == 0
    try:
        configure_threads(workers)
        return body(argv)
    except KeyboardInterrupt:
        if main_rank:
            print("interrupted", file=sys.stderr)
        return 130
    except RankFailed as exc:
        if main_rank:
            print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except BaseException as exc:
        if not is_user_error(exc):
            raise
        if main_rank:
            print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 2
    finally:
        leave()


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    """`--env-config FILE` and `--env KEY=VALUE ...` (repeatable: every --env adds to the overrides)."""
    parser.add_argument("--env-config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML/JSON file of EnvConfig fields")
    parser.add_argument("--env", nargs="+", action="extend", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                        help="EnvConfig overrides, e.g. --env epochs=5 device=cpu; repeated --env flags add up "
                             "(a key given twice with different values is refused)")


def env_config_data(args: Mapping[str, Any], base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The EnvConfig fields the command line sets: `--env-config` (else `base`) with the `--env`
    overrides, as a dict (its keys are the fields the user chose)."""
    from mtkd_env.config import load_config_file, parse_overrides

    data = load_config_file(args["env_config"]) if "env_config" in args else dict(base or {})
    data.update(parse_overrides(args.get("env", []), "--env"))
    return data


def env_config_from(args: Mapping[str, Any], base: Optional[Dict[str, Any]] = None) -> Any:
    """The `EnvConfig` of `--env-config` (else `base`, else the defaults) with the `--env` overrides."""
    from mtkd_env.config import EnvConfig

    return EnvConfig.from_dict(env_config_data(args, base))


def given_flags(parser: argparse.ArgumentParser, args: Mapping[str, Any], dests: Sequence[str]) -> List[str]:
    """The flags among `dests` that the command line gave (every flag's default is SUPPRESS)."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return [flags.get(d, "--" + d.replace("_", "-")) for d in dests if d in args]
