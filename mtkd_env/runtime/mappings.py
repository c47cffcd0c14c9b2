"""Reading settings from text safely: YAML with YAML 1.2 numbers, `KEY=VALUE` pairs, and a size
guard against YAML anchor bombs (a few hundred bytes of shared lists that expand exponentially:
whatever walks or prints the expanded value never ends). Nothing from the domain here.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, Iterable, Optional

from .errors import ConfigError, short_repr

__all__ = ["MAX_VALUES", "check_size", "safe_yaml", "parse_pairs"]


MAX_VALUES = 10_000
"""Most values (list items, mapping entries) a config file or a KEY=VALUE may hold."""


def check_size(value: Any, where: str, limit: int = MAX_VALUES) -> Any:
    """`value`, unless it holds more than `limit` values in all (a YAML anchor bomb: shared lists
    that expand exponentially); the walk stops at `limit`, so it costs at most that much."""
    budget = limit
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            budget -= len(item)
            stack += list(item.values())
        elif isinstance(item, (list, tuple)):
            budget -= len(item)
            stack += list(item)
        if budget < 0:
            raise ConfigError(f"{where}: expected at most {limit} values in all, got more (nested or repeated "
                              f"lists?)")
    return value


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load`, reading `1e-4` as a number (YAML 1.2; PyYAML's 1.1 reads it as a string)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


@functools.lru_cache(maxsize=None)
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def parse_pairs(pairs: Optional[Iterable[str]], flag: str) -> Dict[str, Any]:
    """KEY=VALUE strings -> dict; values are read as YAML scalars/lists (`epochs=2`, `teachers=[a,b]`).
    A key given twice with different values is refused: no value is silently dropped."""
    import yaml

    out: Dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"{flag} {short_repr(pair)}: expected KEY=VALUE")
        key, text = pair.split("=", 1)
        key = key.strip()
        try:
            value = check_size(safe_yaml(text), f"{flag} {key}") if text != "" else None
        except yaml.YAMLError:
            value = text
        if key in out and out[key] != value:
            raise ConfigError(f"{flag}: {key} is given twice ({short_repr(out[key])} and {short_repr(value)}); "
                              f"give each key once")
        out[key] = value
    return out
