"""Settings are declared once, as fields of a pydantic dataclass: type, bounds (`Field(ge=...)`),
choices (`Literal[...]`), default and the docstring under the field. pydantic does the checking
and the JSON schema; this module adds what it does not do for us: the argparse flags and --help
(`add_options`), the one-line `ConfigError` ("<field>: expected <what>, got <short value>") and the
rows of the config reference (`reference_rows`).

    @settings(label="flag")
    class Options:
        jobs: Annotated[int, Field(ge=1)] = 1
        \"\"\"Parallel worker processes.\"\"\"
        out: Annotated[str, Cli(metavar="DIR")] = "out"
        \"\"\"Output folder.\"\"\"

    add_options(parser, Options)                         # --jobs N, help "Parallel worker ... (default: 1)"
    opts = options_from(Options, vars(parser.parse_args(argv)))   # "--jobs: expected an integer >= 1, got 0"

Flags: `--field-name` (or `Cli(flag=...)`; `Cli(positional=True)`: a positional argument); bools get `--x/--no-x`; lists take several values and a
repeated flag extends the list (`Cli(split=True)` lists also split on commas); dicts take KEY=VALUE
pairs. Every flag's parser default is `argparse.SUPPRESS`, so the parsed namespace holds exactly
the flags given (what `--resume`-style "cannot change it" checks need).

Why pydantic and not tyro: the same declarations also validate what never passes a command line
(`EnvConfig` from YAML/JSON and `gym.make` kwargs, hyperparameter files, API calls) and give the
JSON schema; tyro would generate --help but not those, and its flags (`--jobs INT`, no SUPPRESS
defaults, its own error text) would break the CLIs' contract. The argparse layer left here is ~80 lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import annotated_types
import pydantic
from pydantic import ConfigDict, ValidationError

from .errors import ConfigError, did_you_mean, short_repr
from .mappings import parse_pairs

__all__ = ["Cli", "DeviceName", "SETTINGS", "settings", "config_error", "add_options", "options_from", "reference_rows",
           "type_name", "split_names"]

SETTINGS = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True,
                      arbitrary_types_allowed=True)
"""Every settings class: unknown keys refused, no silent coercion ("64" is not an int), finite floats."""


@dataclasses.dataclass(frozen=True)
class Cli:
    """How a field appears on the command line (put it in the field's `Annotated[...]`)."""

    flag: Optional[str] = None
    """The flag, default `--field-name`."""
    metavar: Optional[str] = None
    split: bool = False
    """List values also split on commas."""
    hidden: bool = False
    """Not a flag (set by the program)."""
    positional: bool = False
    """A positional argument (named by `metavar`, default the field name upper-cased) instead of a flag."""
    help_default: Optional[str] = None
    """The default shown in --help, when the CLI's default is not the field's ("": none shown)."""
    item: str = "value"
    """What a list holds, for "expected a non-empty list of <item>s" (with `Field(min_length=1)`)."""
    expected: Optional[str] = None
    """What every error of the field says was expected (for unions, e.g. "a number or 'lin_<number>'")."""


DeviceName = Annotated[str, pydantic.Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$"),
                      Cli(expected="'auto', 'cpu', 'cuda' or 'cuda:N'")]
"""A torch device name, declared once for every settings class (whether it exists is
`runtime.resources.resolve_device`'s check, at run time)."""


def settings(cls: Optional[type] = None, *, label: str = "field", prefix: str = "",
             unknown: str = "field(s)", known: str = "fields") -> Any:
    """Class decorator: a strict pydantic dataclass (`SETTINGS`) whose validation errors are one-line
    `ConfigError`s naming the field (`label="field"`) or its flag (`label="flag"`), after `prefix`."""

    def wrap(klass: type) -> type:
        klass = pydantic.dataclasses.dataclass(config=SETTINGS)(klass)
        init = klass.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise config_error(exc, klass, label=label, prefix=prefix, unknown=unknown, known=known) from None

        klass.__init__ = __init__  # type: ignore[method-assign]
        return klass

    return wrap(cls) if cls is not None else wrap


# --- types and constraints --------------------------------------------------------------------
def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _unwrap(tp: Any) -> Tuple[Any, list, bool]:
    """(bare type, Annotated metadata, nullable) of a hint like Optional[Annotated[int, Field(ge=1)]]."""
    meta: list = []
    nullable = False
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            meta += list(tp.__metadata__)
            tp = tp.__origin__
        elif _is_union(tp) and type(None) in typing.get_args(tp):
            nullable = True
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return Union[tuple(rest)], meta, nullable
            tp = rest[0]
        else:
            return tp, meta, nullable


def _constraints(meta: list) -> list:
    out = []
    for m in meta:
        if isinstance(m, pydantic.fields.FieldInfo):
            out += m.metadata
        elif isinstance(m, annotated_types.GroupedMetadata):
            out += list(m)
        else:
            out.append(m)
    return out


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls, include_extras=True)[name]


def _cli(cls: type, name: str) -> Cli:
    return next((m for m in _unwrap(_hint(cls, name))[1] if isinstance(m, Cli)), Cli())


def _item(tp: Any) -> Any:
    """The item hint of a list hint."""
    args = typing.get_args(tp)
    return args[0] if args else Any


def type_name(tp: Any) -> str:
    """"int", "int or null", "one of ['a', 'b']", "list", ... for a type hint."""
    bare, _, nullable = _unwrap(tp)
    if typing.get_origin(bare) is Literal:
        text = f"one of {list(typing.get_args(bare))}"
    elif _is_union(bare):
        text = " or ".join(type_name(a) for a in typing.get_args(bare))
    elif bare is Any:
        text = "any value"
    else:
        origin = typing.get_origin(bare) or bare
        text = getattr(origin, "__name__", str(origin))
    return f"{text} or null" if nullable else text


def _bounds_text(meta: list) -> str:
    lo = hi = None
    for c in _constraints(meta):
        if isinstance(c, annotated_types.Ge):
            lo = ("[", ">=", c.ge)
        elif isinstance(c, annotated_types.Gt):
            lo = ("(", ">", c.gt)
        elif isinstance(c, annotated_types.Le):
            hi = ("]", "<=", c.le)
        elif isinstance(c, annotated_types.Lt):
            hi = (")", "<", c.lt)
    def num(v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    if lo and hi:
        return f"in {lo[0]}{num(lo[2])}, {num(hi[2])}{hi[0]}"
    if lo or hi:
        bound = lo or hi
        return f"{bound[1]} {num(bound[2])}"
    return ""


def _constraint_text(tp: Any) -> str:
    """"> 0", "in [0, 1]", "items in (0, 1)", "non-empty", "one of [...]" for a hint (reference rows)."""
    bare, meta, _ = _unwrap(tp)
    parts = [_bounds_text(meta)]
    if typing.get_origin(bare) is Literal:
        parts.append(f"one of {list(typing.get_args(bare))}")
    if typing.get_origin(bare) in (list, tuple):
        item, item_meta, _ = _unwrap(_item(bare))
        parts.append(("items " + _bounds_text(item_meta)) if _bounds_text(item_meta) else "")
        if typing.get_origin(item) is Literal:
            parts.append(f"items one of {list(typing.get_args(item))}")
    if any(getattr(c, "min_length", 0) for c in _constraints(meta)):
        parts.append("non-empty")
    return "; ".join(p for p in parts if p)


# --- errors -------------------------------------------------------------------------------------
def _flag(cls: type, name: str) -> str:
    cli = _cli(cls, name)
    if cli.positional:
        return cli.metavar or name.upper()
    return cli.flag or "--" + name.replace("_", "-")


def config_error(exc: ValidationError, cls: type, *, label: str = "field", prefix: str = "",
                 unknown: str = "field(s)", known: str = "fields") -> ConfigError:
    """The first problem of a pydantic `ValidationError` on settings class `cls`, as one line:
    "<field>: expected <what>, got <short value>"; unknown keys with "did you mean"."""
    errors = exc.errors(include_url=False)
    names = [f.name for f in dataclasses.fields(cls)]
    extra = [str(e["loc"][0]) for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if extra:
        return ConfigError(f"unknown {unknown} {extra}{did_you_mean(extra, names)}; known{' ' * bool(known)}{known}: "
                           f"{sorted(names)}")
    # of a union's branches, the one whose type matched (a bound or choice failed) says the most
    err = next((e for e in errors if not e["type"].endswith("_type") and e["loc"][:1] == errors[0]["loc"][:1]),
               errors[0])
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind == "value_error" and isinstance(err.get("ctx", {}).get("error"), ConfigError):
        return err["ctx"]["error"]  # a cross-field check of the class's __post_init__
    if not loc or loc[0] not in names:
        return ConfigError(f"{prefix}{cls.__name__}: {err['msg']}")
    name = str(loc[0])
    where = prefix + (_flag(cls, name) if label == "flag" else name)
    hint = _hint(cls, name)
    got = f"got {short_repr(value)}"
    if kind in ("missing", "missing_argument"):
        return ConfigError(f"{where} is required")
    if _cli(cls, name).expected:  # the whole value: the shallowest error of the field holds it
        whole = min((e for e in errors if e["loc"][:1] == loc[:1]), key=lambda e: len(e["loc"])).get("input")
        return ConfigError(f"{where}: expected {_cli(cls, name).expected}, got {short_repr(whole)}")
    plural = typing.get_origin(_unwrap(hint)[0]) is list and any(isinstance(part, int) for part in loc[1:])
    if plural:
        hint = _item(_unwrap(hint)[0])
    bare, meta, nullable = _unwrap(hint)
    if kind == "finite_number":
        return ConfigError(f"{where}: expected a finite number, {got}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        integer = bare is int
        what = ("integers" if integer else "numbers") if plural else ("an integer" if integer else "a number")
        null = " or null" if nullable and not plural else ""
        bounds = _bounds_text(meta) or _bounds_text([annotated_types.Interval(**err.get("ctx", {}))])
        return ConfigError(f"{where}: expected {what} {bounds}{null}, {got}")
    if kind == "literal_error":
        choices = list(typing.get_args(bare)) if typing.get_origin(bare) is Literal else err["ctx"]["expected"]
        return ConfigError(f"{where}: expected one of {choices}, {got}")
    if kind == "too_short":
        return ConfigError(f"{where}: expected a non-empty list of {_cli(cls, name).item}s")
    if kind.endswith("_type") or kind in ("is_instance_of", "none_required", "callable_type"):
        return ConfigError(f"{where}: expected {type_name(hint)}, got {type(value).__name__} {short_repr(value)}")
    return ConfigError(f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}, {got}")


# --- command line -------------------------------------------------------------------------------
def split_names(values: Optional[Iterable[Any]]) -> List[str]:
    """Comma- and space-separated names from repeated flags: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [n.strip() for chunk in values or [] for n in str(chunk).split(",") if n.strip()]


def _default_text(cls: type, f: dataclasses.Field) -> Optional[str]:
    """The default as --help and the reference show it (`Cli.help_default` if given); None if required."""
    if _cli(cls, f.name).help_default is not None:
        return _cli(cls, f.name).help_default
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is dataclasses.MISSING:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, *, exclude: Sequence[str] = ()) -> None:
    """One flag per CLI field of settings class `cls` (see the module docstring)."""
    for f in dataclasses.fields(cls):
        cli = _cli(cls, f.name)
        if cli.hidden or f.name in exclude:
            continue
        bare, meta, _ = _unwrap(_hint(cls, f.name))
        default = _default_text(cls, f)
        help_ = cls.__pydantic_fields__[f.name].description or ""
        if default:
            help_ = f"{help_} (default: {default})".strip()
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_.replace("%", "%%"), "dest": f.name}
        if cli.metavar:
            kwargs["metavar"] = cli.metavar
        origin = typing.get_origin(bare)
        flag = _flag(cls, f.name)
        if cli.positional:  # its name is the dest; a field with a default may be left out
            kwargs = dict(kwargs, metavar=flag, nargs=None if default is None else "?")
            parser.add_argument(kwargs.pop("dest"), type=_scalar(bare), **kwargs)
        elif bare is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin in (list, tuple):
            item = _unwrap(_item(bare))[0]
            nonempty = any(getattr(c, "min_length", 0) for c in _constraints(meta))
            parser.add_argument(flag, nargs="+" if nonempty else "*", action="extend",
                                type=str if cli.split else _scalar(item), **kwargs)
        elif origin is dict or bare is dict:
            parser.add_argument(flag, nargs="*", action="extend", **{"metavar": "KEY=VALUE", **kwargs})
        else:
            if origin is Literal:
                kwargs["choices"] = typing.get_args(bare)
            parser.add_argument(flag, type=_scalar(bare), **kwargs)


def _scalar(tp: Any) -> Callable[[str], Any]:
    if typing.get_origin(tp) is Literal:
        tp = type(typing.get_args(tp)[0])
    return _NUMERALS.get(tp, str)


def _numeral(tp: type, what: str) -> Callable[[str], Any]:
    """An argparse `type=` whose refusal is our wording: "argument --n: expected an integer, got 'x'"."""
    def parse(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {short_repr(text)}") from None

    parse.__name__ = what
    return parse


_NUMERALS: Dict[type, Callable[[str], Any]] = {int: _numeral(int, "an integer"), float: _numeral(float, "a number")}


def options_from(cls: type, given: Mapping[str, Any], **fixed: Any) -> Any:
    """An instance of `cls` from the parsed flags `given` (missing ones take the field defaults) and
    `fixed` values; dict fields parse their KEY=VALUE pairs, `split` lists their commas."""
    values: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            values[f.name] = fixed[f.name]
        elif f.name in given:
            value, bare = given[f.name], _unwrap(_hint(cls, f.name))[0]
            if (typing.get_origin(bare) is dict or bare is dict) and isinstance(value, list):
                value = parse_pairs(value, _flag(cls, f.name))
            elif _cli(cls, f.name).split:
                value = split_names(value)
            values[f.name] = value
    return cls(**values)


# --- reference ----------------------------------------------------------------------------------
def reference_rows(cls: type) -> List[Tuple[str, str, str, str, str]]:
    """One row per field of settings class `cls`: (name, type, default, constraints, doc), as text,
    for the generated config reference."""
    rows = []
    for f in dataclasses.fields(cls):
        hint, default = _hint(cls, f.name), _default_text(cls, f)
        kind = "str" if typing.get_origin(_unwrap(hint)[0]) is Literal else type_name(hint)
        doc = " ".join((cls.__pydantic_fields__[f.name].description or "").split())
        rows.append((f.name, kind, "required" if default is None else default, _constraint_text(hint), doc))
    return rows
