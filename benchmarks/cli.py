"""What every benchmark's command line does around its measurement: parse the flags of its settings
class (with a `device` and a `json` field) and check them before any work (`parse_flags`), then
write the figures to `--json` (`write_json`)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence, Tuple

import torch

from mtkd_env.runtime.cli import ArgumentParser
from mtkd_env.runtime.files import atomic_write_text, check_output_file
from mtkd_env.runtime.options import add_options, options_from
from mtkd_env.runtime.resources import resolve_device

__all__ = ["parse_flags", "write_json"]


def parse_flags(cls: type, prog: str, description: Optional[str],
                argv: Optional[Sequence[str]]) -> Tuple[Any, torch.device]:
    """(the settings of `cls` from `argv`, the resolved device): a bad or absent device or an
    unwritable --json file is one line before any work."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, cls)
    args = options_from(cls, vars(parser.parse_args(argv)))
    device = resolve_device(args.device)
    if args.json:
        check_output_file(args.json, "--json")
    return args, device


def write_json(path: Optional[str], figures: dict) -> None:
    """Write `figures` to `path` (the --json flag) atomically; nothing when it is None."""
    if path:
        atomic_write_text(path, json.dumps(figures, indent=2))
