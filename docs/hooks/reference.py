"""mkdocs hook: the generated parts of the documentation, rendered from the code at build time.

A page holds a marker; `on_page_markdown` replaces it with what the code declares today, so that
the reference never drifts from the declarations (nothing here is copied by hand):

    <!-- reference:env-config -->    every `EnvConfig` field: name, type, default, doc  (`env_config_reference`)
    <!-- reference:hyperparams -->   every `--algo`: its shipped hyperparameter file and, for the
                                     project's own agents, their hyperparameter declarations (`hyperparams_reference`)
    <!-- reference:cli -->           every command line's `--help`  (`cli_reference`)
    <!-- floors-table -->            the floors of `mtkd_env/layering.py`  (`floors_table`)

One function reads each kind of declaration: `settings_rows` (a settings class -> rows; the only
code that reads settings declarations, through `reference_rows`), `cli_help` (a CLI module ->
its `--help`), `floors_table` (the layering module -> a table). When the settings layer changes,
only the matching function changes. `tests/test_docs.py` calls them without mkdocs.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

MARKERS: Dict[str, str] = {}  # marker -> name of the function that renders it (filled below)

CLIS: Sequence[Tuple[str, str]] = (
    # (what the user types, the module whose parser it is)
    ("python -m mtkd_env", "mtkd_env.__main__"),
    ("python -m mtkd_env.teachers", "mtkd_env.teachers.cli"),
    ("python -m agents.train", "agents.train"),
    ("python -m agents.evaluate", "agents.evaluate"),
    ("python -m agents.curves", "agents.curves"),
    ("python -m baselines.compare", "baselines.compare.cli"),
    ("python -m baselines.oracle", "baselines.oracle"),
    ("python -m baselines.diagnose", "baselines.diagnose"),
    ("python -m benchmarks.step_overhead", "benchmarks.step_overhead"),
    ("python -m benchmarks.vector_env", "benchmarks.vector_env"),
    ("python -m benchmarks.loader", "benchmarks.loader"),
    ("python -m benchmarks.speedup", "benchmarks.speedup"),
    ("python -m benchmarks.suite_targets", "benchmarks.suite_targets"),
    ("python -m benchmarks.split_noise", "benchmarks.split_noise"),
)
HELP_COLUMNS = 100


# --- the one reader per kind of declaration --------------------------------------------------
def settings_rows(cls: type) -> List[Tuple[str, str, str, str, str]]:
    """(name, type, default, constraints, one-line doc) of every field of a settings class: the
    declarations read by `mtkd_env.runtime.options.reference_rows`, the same reader that builds the
    flags and the checks."""
    from mtkd_env.runtime.options import reference_rows

    return [(name, kind, default, constraints, _one_line(doc))
            for name, kind, default, constraints, doc in reference_rows(cls)]


def cli_help(module_name: str, prog: str = "") -> str:
    """The `--help` text of a CLI module: `build_parser().format_help()` where the module has one,
    else what `main(["--help"])` prints."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)  # argparse wraps to the terminal width: fix it
    try:
        module = importlib.import_module(module_name)
        if hasattr(module, "build_parser"):
            return _parser_help(module.build_parser())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                module.main(["--help"])
            except SystemExit:
                pass
        text = out.getvalue()
        if "usage:" not in text:
            raise RuntimeError(f"{module_name}: `main(['--help'])` printed no usage text")
        return text
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _parser_help(parser: Any) -> str:
    """A parser's help, then each subcommand's (`train`, `list`, ...)."""
    import argparse

    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                text += "\n" + sub.format_help()
    return text


def floors_table() -> str:
    """The floors table from `mtkd_env.layering`, or a one-line note while that module does not exist.

    A `markdown_table()` function in the module is used as is. Otherwise its first public
    upper-case attribute that is a mapping or a sequence is read generically: each entry is a
    floor (lowest first), with the places on it. With `FLOORS` (a sequence of floors) and a
    `PLACES` mapping (place -> what it holds), the table has one row per place: its floor,
    counted from the ground (0), the place, what it holds, and what it may import.
    """
    try:
        layering = importlib.import_module("mtkd_env.layering")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mtkd_env.layering",):
            raise
        return ("*The floors table will be generated here from `mtkd_env/layering.py`; that module does not "
                "exist in this version yet.*")
    if callable(getattr(layering, "markdown_table", None)):
        return layering.markdown_table()
    floors, places = getattr(layering, "FLOORS", None), getattr(layering, "PLACES", None)
    if isinstance(floors, (list, tuple)) and isinstance(places, dict) and places:
        return _described_floors(floors, places)
    data = None
    for name in getattr(layering, "__all__", None) or sorted(vars(layering)):
        value = getattr(layering, name, None)
        if name.isupper() and isinstance(value, (dict, list, tuple)) and value:
            data = value
            break
    if data is None:
        return "*`mtkd_env/layering.py` declares no floors table (no upper-case mapping or sequence).*"
    entries = list(data.items()) if isinstance(data, dict) else list(data)
    rows = []
    for i, entry in enumerate(entries):
        if isinstance(entry, tuple) and len(entry) == 2:
            floor, places = entry
        elif hasattr(entry, "name") and hasattr(entry, "places"):
            floor, places = entry.name, entry.places
        else:
            floor, places = i, entry
        rows.append((str(floor), _places(places)))
    return _table(("floor (lowest first)", "places"), rows)


def _described_floors(floors: Sequence[Sequence[str]], places: Dict[str, str]) -> str:
    """One row per place: floor (0 = ground), `mtkd_env.<place>`, what it holds, what it may import."""
    rows = []
    for i, on_floor in enumerate(floors):
        below = "no other place" if i == 0 else (
            "floor 0" if i == 1 else f"floors 0\u2013{i - 1}")
        for place in on_floor:
            path = "mtkd_env/__init__.py" if place == "__init__" else (
                "mtkd_env/__main__.py" if place == "__main__" else f"mtkd_env.{place}")
            rows.append((f"{i}" + (" (ground)" if i == 0 else ""), f"`{path}`", _one_line(places.get(place, "")),
                         below))
    return _table(("floor", "place", "holds", "may import (besides itself)"), rows)


# --- the page sections -----------------------------------------------------------------------
def env_config_reference() -> str:
    """The `EnvConfig` table."""
    import mtkd_env

    return _settings_table(mtkd_env.EnvConfig, "field")


def hyperparams_reference() -> str:
    """Per algorithm: the shipped hyperparameter file's values, then (own agents) every declared
    hyperparameter."""
    from agents import algos
    from agents.hyperparams import default_hyperparams

    own = {"mtkd-rl": "MTKDRLConfig", "mtkd-rl-pg": "MTKDRLConfig", "rmts": "RMTSConfig"}
    parts = []
    for algo, spec in algos.REGISTRY.items():
        parts.append(f"### `{algo}`\n")
        shipped = default_hyperparams(algo)
        parts.append(f"Shipped values (`agents/hyperparams/{algo}.yml`):\n")
        parts.append(_table(("key", "value"), [(f"`{k}`", f"`{_value(v)}`") for k, v in shipped.items()]))
        config_class = getattr(spec, "config_class", None) or (
            getattr(algos, own[algo]) if algo in own and hasattr(algos, own[algo]) else None)
        if config_class is not None:
            parts.append(f"\nEvery hyperparameter of `{algo}` (`{config_class.__name__}`), besides `n_timesteps` "
                         "and `env_kwargs`:\n")
            parts.append(_settings_table(config_class, "key"))
        else:
            parts.append("\nAny constructor argument of Stable-Baselines3's class for this algorithm is accepted, "
                         "plus the rl-zoo3 keys `n_timesteps`, `policy`, `normalize`, `policy_kwargs`, "
                         "`env_kwargs`, `n_envs` and `vec_env`.")
        parts.append("")
    return "\n".join(parts)


def cli_reference() -> str:
    """A section per command line with its `--help`."""
    parts = []
    for command, module in CLIS:
        parts.append(f"### `{command}`\n\n```text\n{cli_help(module).rstrip()}\n```\n")
    return "\n".join(parts)


def scenarios_table() -> str:
    """One row per scenario of `mtkd_env.scenarios`: its pool, the right weighting, the formulas'
    expected ranking and how its oracle is searched (the recipes' own documentation)."""
    from mtkd_env.scenarios import SCENARIOS

    rows = []
    for sc in SCENARIOS.values():
        teachers = ", ".join(f"`{t}`" for t in sc.settings["teachers"])
        pool = f"{sc.summary}: {teachers}" + (f" (pools of {sc.settings['pool_size']})"
                                              if sc.settings.get("pool_size") else "")
        rows.append([f"`{sc.name}`", pool, sc.right_weighting, sc.predictions, f"`{sc.oracle}`"])
    return _table(["scenario", "teacher pool", "right weighting (and why)", "formulas: expected", "oracle"], rows)


MARKERS.update({
    "<!-- scenarios-table -->": "scenarios_table",
    "<!-- reference:env-config -->": "env_config_reference",
    "<!-- reference:hyperparams -->": "hyperparams_reference",
    "<!-- reference:cli -->": "cli_reference",
    "<!-- floors-table -->": "floors_table",
})


INCLUDE = re.compile(r"<!-- include: (\S+)(?: shift=(\d))? -->")
LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def include(path: str, shift: int = 0, root: str = ROOT) -> str:
    """A repository file (`<!-- include: PATH -->`, PATH from the repository root) as page text.

    Its relative links are rewritten for a page at the top of docs/: a link into docs/ becomes a
    link to that page or image, a link to any other repository file becomes its path as code (the
    site holds only docs/), so the included file reads the same in the repository and on the site.
    `shift=N` moves every heading N levels down (a file included under a page's own title).
    Links inside code blocks are left alone."""
    with open(os.path.join(root, path), encoding="utf-8") as f:
        text = f.read()
    base = os.path.dirname(path)

    def link(match: "re.Match[str]") -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(base, file_part))
        if resolved == "docs" or resolved.startswith("docs" + os.sep):
            rel = os.path.relpath(resolved, "docs")
            return f"{label}({rel}{'#' + anchor if anchor else ''})"
        text_label = label[1:-1] if not label.startswith("!") else label[2:-1]
        shown = resolved + ("/" if file_part.endswith("/") else "")
        if not re.search(r"\s", text_label.strip("`")):  # the label is a path itself: show the full path
            return f"`{shown}`"
        return f"{text_label} (`{shown}`)"

    parts = re.split(r"(^```.*?^```[^\n]*$)", text, flags=re.M | re.S)  # odd parts: fenced code
    for i in range(0, len(parts), 2):
        parts[i] = LINK.sub(link, parts[i])
        if shift:
            parts[i] = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + shift) + " ", parts[i], flags=re.M)
    return "".join(parts)


# --- mkdocs ----------------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any = None, config: Any = None, files: Any = None, **_: Any) -> str:
    markdown = INCLUDE.sub(lambda m: include(m.group(1), int(m.group(2) or 0)), markdown)
    for marker, fn in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[fn]())
    return markdown


# --- formatting ------------------------------------------------------------------------------
def _settings_table(cls: type, what: str) -> str:
    return _table((what, "type", "default", "allowed", "meaning"), [
        (f"`{n}`", f"`{t}`", f"`{d}`", c, doc) for n, t, d, c, doc in settings_rows(cls)])


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _value(value: Any) -> str:
    if callable(value) and not isinstance(value, type):
        return getattr(value, "__name__", repr(value))
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _places(places: Any) -> str:
    if isinstance(places, dict):
        return "; ".join(f"`{k}`: {_one_line(str(v))}" for k, v in places.items())
    if isinstance(places, (list, tuple, set, frozenset)):
        return ", ".join(f"`{p}`" for p in places)
    return f"`{places}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r.replace("\n", " ").replace("|", "\\|") for r in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
