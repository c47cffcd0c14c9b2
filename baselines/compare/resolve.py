"""Which names of a comparison are formula policies (`baselines.POLICIES`) and which are RL agents
(`agents.api.ALGOS`), and the options of each formula policy."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from mtkd_env.runtime.errors import did_you_mean

from ..policies import POLICIES
from .options import CompareError, CompareOptions

__all__ = ["resolve_policies", "formula_options"]


def resolve_policies(names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split names into (formula, rl); `agents.api` is imported only if a name is not a formula."""
    formula = [n for n in names if n in POLICIES]
    other = [n for n in names if n not in POLICIES]
    if not other:
        return formula, []
    from agents import api

    algos = tuple(api.ALGOS)
    unknown = [n for n in other if n not in algos]
    if unknown:
        raise CompareError(f"unknown policy {unknown[0]!r}{did_you_mean([unknown[0]], [*POLICIES, *algos])}; known "
                           f"policies: formula {sorted(POLICIES)}; RL policies {list(algos)}")
    return formula, other


def formula_options(name: str, opts: CompareOptions) -> Dict[str, Any]:
    if name in ("ebkd", "ca-mkd"):
        return {"normalization": opts.normalization}
    if name == "aekd":
        return {"cap": opts.aekd_cap}
    if name in ("oracle", "best-constant"):  # the scenario's search on validation, run once and cached
        from ..oracle import load_or_search

        if opts.env_config.scenario is None:
            raise CompareError(f"policy {name!r} needs a scenario: --env scenario=NAME, or --scenarios")
        found = load_or_search(opts.env_config, opts.oracle_seeds, jobs=opts.jobs, progress=opts.progress,
                               executor=opts.executor)
        return {"choice": found["choice" if name == "oracle" else "best_constant"]}
    return {}
