"""Which names of a comparison are formula policies and which are RL agents, and the options of
each formula policy."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from ..policies import POLICIES
from .options import CompareError, CompareOptions

__all__ = ["agents_api", "resolve_policies", "formula_options"]


def agents_api():
    import importlib

    return importlib.import_module("agents.api")


def resolve_policies(names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split names into (formula, rl); `agents.api` is imported only if a name is not a formula."""
    formula = [n for n in names if n in POLICIES]
    other = [n for n in names if n not in POLICIES]
    if not other:
        return formula, []
    try:
        algos = tuple(agents_api().ALGOS)
        rl_note = f"RL policies {list(algos)}"
    except Exception as exc:  # agents not installed / broken: still name the formula policies
        algos = ()
        rl_note = f"RL policies need agents.api, which could not be imported ({type(exc).__name__}: {exc})"
    unknown = [n for n in other if n not in algos]
    if unknown:
        raise CompareError(f"unknown policy {unknown[0]!r}; known policies: formula {sorted(POLICIES)}; "
                           f"{rl_note}")
    return formula, other


def formula_options(name: str, opts: CompareOptions) -> Dict[str, Any]:
    if name in ("ebkd", "ca-mkd"):
        return {"normalization": opts.normalization}
    if name == "aekd":
        return {"cap": opts.aekd_cap}
    return {}
