"""A knob is declared once: as a field of a validated dataclass, with its type, default, bounds,
choices and the docstring under it. The checks and the CLI flag (with its --help text) derive from
that one declaration.

    @dataclass
    class Options:
        jobs: int = knob(1, minimum=1)
        \"\"\"Parallel worker processes.\"\"\"

        def __post_init__(self):
            check_options(self, label="flag")           # "--jobs: expected an integer >= 1, got 0"

    add_options(parser, Options)                         # --jobs N, help "Parallel worker ... (default: 1)"
    opts = options_from(Options, vars(parser.parse_args(argv)))

Flags: `--field-name` (or `flag=`); bools get `--x/--no-x`; lists take several values, and a
repeated flag extends the list (never silently replaces it); `split=True` lists also split on
commas; dicts take KEY=VALUE pairs. Every flag's parser default is `argparse.SUPPRESS`, so the
parsed namespace holds exactly the flags given (what `--resume`-style "cannot change it" checks need).

`check_type` and `field_docs` are also what `EnvConfig` and the agents' hyperparameter dataclasses
use, so type errors read the same everywhere: "<name>: expected <type>, got <type> <value>".
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import types
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import ConfigError

__all__ = ["knob", "is_instance", "check_type", "check_options", "field_docs", "add_options", "options_from", "type_name",
           "coerce_numbers", "split_names", "parse_pairs"]

_KEY = "knob"


def knob(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         flag: Optional[str] = None, minimum: Optional[float] = None, maximum: Optional[float] = None,
         above: Optional[float] = None, choices: Optional[Sequence[Any]] = None, nonempty: Optional[str] = None,
         split: bool = False, cli: bool = True, cli_help_default: Optional[str] = None,
         metavar: Optional[str] = None) -> Any:
    """A dataclass field with its checks and CLI spelling.

    `minimum`/`maximum` (inclusive) and `above` (exclusive) bound numbers, or every item of a list;
    `choices` lists the allowed values; `nonempty="seed"` refuses an empty list ("expected at least one
    seed"); `split` splits list values on commas; `cli=False` keeps the field off the command line;
    `cli_help_default` replaces the default shown in --help (when the CLI's default is not the field's).
    """
    meta = {_KEY: {"flag": flag, "minimum": minimum, "maximum": maximum, "above": above,
                   "choices": tuple(choices) if choices is not None else None, "nonempty": nonempty,
                   "split": split, "cli": cli, "cli_help_default": cli_help_default, "metavar": metavar}}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _spec(f: dataclasses.Field) -> Dict[str, Any]:
    return dict(f.metadata.get(_KEY) or {"cli": True})


# --- types ------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return any(is_instance(value, a) for a in typing.get_args(tp))
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is not None and origin.__module__ == "collections.abc":  # Callable
        return callable(value)
    if origin is not None:  # List[int], Dict[str, Any]: the container, then the items
        if not isinstance(value, origin):
            return False
        args = typing.get_args(tp)
        if origin in (list, tuple, set) and args and args[-1] is not Ellipsis:
            return all(is_instance(v, args[0]) for v in value)
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_type(label: str, value: Any, tp: Any) -> None:
    """`ConfigError("<label>: expected <type>, got <type> <value>")` unless `value` is a `tp`."""
    if not is_instance(value, tp):
        raise ConfigError(f"{label}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")


def coerce_numbers(cls: type, data: Mapping[str, Any]) -> Dict[str, Any]:
    """YAML 1.1 reads `1e-4` as a string: accept such numerals for float fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        tp = hints.get(key)
        if isinstance(value, str) and (tp is float or tp == Optional[float]):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


# --- checks -----------------------------------------------------------------------------------
def _label(f: dataclasses.Field, how: str) -> str:
    if how == "flag":
        return _spec(f).get("flag") or "--" + f.name.replace("_", "-")
    return f.name


def _bound_error(label: str, value: Any, spec: Dict[str, Any], integer: bool, plural: bool) -> Optional[str]:
    lo, hi, above = spec.get("minimum"), spec.get("maximum"), spec.get("above")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{label}: expected a finite number, got {value!r}"
    what = ("integers" if integer else "numbers") if plural else ("an integer" if integer else "a number")
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"{label}: expected {what} in [{lo}, {hi}], got {value!r}"
    if lo is not None and value < lo:
        return f"{label}: expected {what} >= {lo}, got {value!r}"
    if hi is not None and value > hi:
        return f"{label}: expected {what} <= {hi}, got {value!r}"
    if above is not None and not value > above:
        return f"{label}: expected {what} > {above}, got {value!r}"
    return None


def check_options(obj: Any, *, label: str = "field") -> None:
    """Type-, range- and choice-check every field of dataclass instance `obj`; errors name the
    field (`label="field"`) or its CLI flag (`label="flag"`)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name, value, spec = _label(f, label), getattr(obj, f.name), _spec(f)
        check_type(name, value, hints[f.name])
        if value is None:
            continue
        plural = isinstance(value, (list, tuple))
        items = list(value) if plural else [value]
        if spec.get("nonempty") and not items:
            raise ConfigError(f"{name}: expected at least one {spec['nonempty']}")
        for item in items:
            if spec.get("choices") is not None and item not in spec["choices"]:
                raise ConfigError(f"{name}: expected one of {list(spec['choices'])}, got {item!r}")
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                error = _bound_error(name, item, spec, isinstance(item, int), plural)
                if error:
                    raise ConfigError(error)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """Field name -> the docstring placed right after the field in the class body (and its bases')."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError, SyntaxError, IndentationError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# --- command line -----------------------------------------------------------------------------
def split_names(values: Optional[Iterable[Any]]) -> List[str]:
    """Comma- and space-separated names from repeated flags: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [n.strip() for chunk in values or [] for n in str(chunk).split(",") if n.strip()]


def parse_pairs(pairs: Optional[Iterable[str]], flag: str) -> Dict[str, Any]:
    """KEY=VALUE strings -> dict; values are read as YAML scalars/lists (`epochs=2`, `teachers=[a,b]`).
    A key given twice with different values is refused: no value is silently dropped."""
    import yaml

    out: Dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        key, text = pair.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            value = text
        if key in out and out[key] != value:
            raise ConfigError(f"{flag}: {key} is given twice ({out[key]!r} and {value!r}); give each key once")
        out[key] = value
    return out


def _default_text(f: dataclasses.Field, spec: Dict[str, Any]) -> Optional[str]:
    if spec.get("cli_help_default") is not None:
        return spec["cli_help_default"]
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, *, exclude: Sequence[str] = ()) -> None:
    """One flag per CLI field of dataclass `cls` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        spec = _spec(f)
        if not spec.get("cli", True) or f.name in exclude:
            continue
        flag = spec.get("flag") or "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        args = typing.get_args(tp)
        if typing.get_origin(tp) is Union and type(None) in args:
            tp = next(a for a in args if a is not type(None))
        help_ = docs.get(f.name, "")
        default = _default_text(f, spec)
        if default is not None:
            help_ = f"{help_} (default: {default})".strip()
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_.replace("%", "%%"), "dest": f.name}
        if spec.get("metavar"):
            kwargs["metavar"] = spec["metavar"]
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin in (list, tuple):
            item = typing.get_args(tp)[0] if typing.get_args(tp) else str
            nargs = "*" if not spec.get("nonempty") else "+"
            parser.add_argument(flag, nargs=nargs, action="extend", type=str if spec.get("split") else item,
                                **kwargs)
        elif origin is dict or tp is dict:
            parser.add_argument(flag, nargs="*", action="extend", **{"metavar": "KEY=VALUE", **kwargs})
        else:
            if spec.get("choices") is not None:
                kwargs["choices"] = spec["choices"]
            parser.add_argument(flag, type=tp if tp in (int, float, str) else str, **kwargs)


def options_from(cls: type, given: Mapping[str, Any], **fixed: Any) -> Any:
    """An instance of `cls` from the parsed flags `given` (missing ones take the field defaults) and
    `fixed` values; dict fields parse their KEY=VALUE pairs, `split` lists their commas."""
    hints = typing.get_type_hints(cls)
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in fixed and f.name not in given:
            raise ConfigError(f"{_spec(f).get('flag') or '--' + f.name.replace('_', '-')} is required")
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif f.name in given:
            value, spec = given[f.name], _spec(f)
            tp = hints[f.name]
            if (typing.get_origin(tp) is dict or tp is dict) and isinstance(value, list):
                value = parse_pairs(value, spec.get("flag") or "--" + f.name.replace("_", "-"))
            elif spec.get("split"):
                value = split_names(value)
            values[f.name] = value
    return cls(**values)
