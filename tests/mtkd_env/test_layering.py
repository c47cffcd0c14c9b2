"""Every import obeys the allowed-imports table of `mtkd_env.layering`: no place of `mtkd_env`
imports one on its own floor or above, and no package imports one after it in `PACKAGES`.

Imports are read with `ast`, so lazy imports inside functions count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from mtkd_env.layering import FLOORS, PACKAGES, PLACES

REPO = Path(__file__).resolve().parents[2]
FLOOR_OF: Dict[str, int] = {place: i for i, places in enumerate(FLOORS) for place in places}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_in(root: Path, path: Path) -> Iterator[Tuple[int, str, str]]:
    """(line, importing module, imported module) for every import of one of `PACKAGES` in `path`;
    `from package import name` yields `package.name` when that is a module, else `package`."""
    mod = module_name(root, path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if is_module(root, f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in PACKAGES:
                yield node.lineno, mod, target


def place(module: str) -> str:
    """The place of a module of `mtkd_env`: the name after `mtkd_env.`, `__init__` for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def broken_rule(source: str, target: str) -> Optional[str]:
    """Why `source` may not import `target`, or None when the table allows it."""
    src_pkg, dst_pkg = source.split(".")[0], target.split(".")[0]
    if src_pkg != dst_pkg:
        if PACKAGES.index(dst_pkg) > PACKAGES.index(src_pkg):
            return f"package {src_pkg} imports {dst_pkg}, which comes after it in PACKAGES"
        return None
    if src_pkg != "mtkd_env":
        return None
    here, there = place(source), place(target)
    for p in (here, there):
        if p not in FLOOR_OF:
            return f"place mtkd_env.{p} is on no floor of mtkd_env.layering.FLOORS"
    if here == there or FLOOR_OF[there] < FLOOR_OF[here]:
        return None
    way = "sideways" if FLOOR_OF[there] == FLOOR_OF[here] else "upward"
    return f"{way}: {here} (floor {FLOOR_OF[here]}) imports {there} (floor {FLOOR_OF[there]})"


def violations(root: Path) -> List[str]:
    """'file:line: importing -> imported: why' for every import under `root` that breaks the table."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, source, target in imports_in(root, path):
                why = broken_rule(source, target)
                if why:
                    found.append(f"{path.relative_to(root)}:{line}: {source} -> {target}: {why}")
    return found


def test_every_import_follows_the_table():
    found = violations(REPO)
    assert not found, "imports that break mtkd_env/layering.py:\n" + "\n".join(found)


def test_every_place_of_mtkd_env_is_on_one_floor():
    places = {p.stem if p.is_file() else p.name for p in (REPO / "mtkd_env").iterdir()
              if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert places == set(FLOOR_OF)
    assert sum(len(f) for f in FLOORS) == len(FLOOR_OF)  # no place on two floors


def test_every_place_says_what_it_holds():
    assert set(PLACES) == set(FLOOR_OF) and all(PLACES.values())  # the docs' floors table reads them


def _tree(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
    return root


def test_an_upward_lazy_import_is_reported_with_file_and_line(tmp_path):
    root = _tree(tmp_path, {
        "mtkd_env/__init__.py": "",
        "mtkd_env/runtime/__init__.py": "",
        "mtkd_env/runtime/errors.py": "import os\n\n\ndef late():\n    from ..engine import core\n",
        "mtkd_env/engine/__init__.py": "",
        "mtkd_env/engine/core.py": "from ..runtime.errors import late\n",
    })
    assert violations(root) == [
        "mtkd_env/runtime/errors.py:5: mtkd_env.runtime.errors -> mtkd_env.engine.core: "
        "upward: runtime (floor 0) imports engine (floor 5)"]


def test_sideways_absolute_and_package_order_imports_are_reported(tmp_path):
    root = _tree(tmp_path, {
        "mtkd_env/__init__.py": "",
        "mtkd_env/data/__init__.py": "import mtkd_env.mdp.rewards\n",
        "mtkd_env/mdp/__init__.py": "",
        "mtkd_env/mdp/rewards.py": "",
        "mtkd_env/env.py": "from mtkd_env import EnvConfig\n",
        "agents/__init__.py": "from baselines import compare\n",
        "baselines/__init__.py": "from agents import train\nfrom mtkd_env import env\n",
    })
    found = violations(root)
    assert found == [
        "mtkd_env/data/__init__.py:1: mtkd_env.data -> mtkd_env.mdp.rewards: sideways: data (floor 1) imports "
        "mdp (floor 1)",
        "mtkd_env/env.py:1: mtkd_env.env -> mtkd_env: upward: env (floor 6) imports __init__ (floor 9)",
        "agents/__init__.py:1: agents -> baselines: package agents imports baselines, which comes after it in "
        "PACKAGES"]
