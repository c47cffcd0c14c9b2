"""Scenario oracles: the known answer of each scenario, found on validation and cached.

    python -m baselines.oracle --scenarios all [--seeds 2000 2001] [--jobs 2] [--env KEY=VALUE ...]

Per scenario (`mtkd_env.scenarios`), every candidate weighting of its search trains students from
the search seeds (disjoint from the leaderboard's evaluation seeds 0..19 and from agent training
seeds) and is scored by its mean **validation** accuracy; the test split is never read. The best
candidate is the scenario's oracle; it is a policy (`--policies oracle` in `baselines.compare`,
`baselines.policies.Oracle`). Candidates by the scenario's `oracle` kind:

- "constant": a grid of constant weightings: each teacher alone, equal weights, equal weights
  without one teacher, and (M >= 4) each pair;
- "route": that grid and the per-sample routing of each sample to its group's expert;
- "schedule": that grid and, for each ordered pair of teachers (i, j), a switch from i to j at
  25 / 50 / 75 % of the episode and a linear ramp from i to j;
- "instance": for each test instance, the grid on that instance (the oracle is per instance), from
  the first search seed only.

Results go to `<cache>/oracles/<scenario>__<key>.json` (key: the env settings that change training,
and the seeds); a second call reads them. `--refresh` searches again.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtkd_env.config import EnvConfig, add_env_flags, default_cache_dir, env_config_data
from mtkd_env.runtime.cli import ArgumentParser, run_cli, say
from mtkd_env.runtime.errors import ConfigError
from mtkd_env.runtime.options import add_options, options_from
from mtkd_env.runtime.executors import ExecutorOptions, execute
from mtkd_env.runtime.files import atomic_write_text
from mtkd_env.scenarios import get_scenario, instance_sets, suite

__all__ = ["candidates", "oracle_key", "oracle_path", "search", "load_or_search", "SEARCH_SEEDS", "main"]

SEARCH_SEEDS = (2000, 2001)
"""Default search seeds: disjoint from the evaluation seeds (0..19) and agent training seeds (1000+)."""

_RUNTIME_FIELDS = ("device", "show_progress", "compile", "compile_mode", "cudnn_benchmark", "teacher_cache_dir",
                   "cache_teacher_outputs", "keep_feature_maps", "eval_batch_size", "reward", "log_rewards",
                   "reward_interval", "granularity", "amp", "channels_last", "instance_set", "instance")
"""Fields that do not change which weighting is best (how it runs, what it reports, which
instance an episode draws); left out of the cache key."""


def _grid(m: int) -> List[List[float]]:
    rows = [np.eye(m)[i] for i in range(m)] + [np.full(m, 1.0 / m)]
    if m > 2:
        rows += [np.where(np.arange(m) == i, 0.0, 1.0 / (m - 1)) for i in range(m)]
    if m > 3:
        for i, j in itertools.combinations(range(m), 2):
            rows.append(np.where(np.isin(np.arange(m), [i, j]), 0.5, 0.0))
    seen, out = set(), []
    for r in rows:
        key = tuple(np.round(r, 6))
        if key not in seen:
            seen.add(key)
            out.append([float(v) for v in r])
    return out


def candidates(scenario: str, num_teachers: int) -> List[Dict[str, Any]]:
    """The candidate choices (`baselines.policies.choice_weights`) of a scenario's search, for one
    pool of `num_teachers` (for "instance", the grid that each instance gets)."""
    sc = get_scenario(scenario)
    out: List[Dict[str, Any]] = [{"kind": "constant", "w": w} for w in _grid(num_teachers)]
    if sc.oracle == "route":
        out.append({"kind": "route", "teacher_groups": list(sc.teacher_groups)})
    elif sc.oracle == "schedule":
        eye = np.eye(num_teachers).tolist()
        for i, j in itertools.permutations(range(num_teachers), 2):
            out += [{"kind": "switch", "a": eye[i], "b": eye[j], "at": at} for at in (0.25, 0.5, 0.75)]
            out.append({"kind": "ramp", "a": eye[i], "b": eye[j]})
    return out


def oracle_key(config: EnvConfig, seeds: Sequence[int]) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _RUNTIME_FIELDS}
    text = json.dumps({"config": data, "seeds": sorted(int(s) for s in seeds)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def oracle_path(config: EnvConfig, seeds: Sequence[int], cache_dir: Optional[str] = None) -> Path:
    name = config.scenario or "custom"
    return Path(cache_dir or f"{default_cache_dir()}/oracles") / f"{name}__{oracle_key(config, seeds)}.json"


def _tasks(config: EnvConfig, choices: List[Dict[str, Any]], seeds: Sequence[int]) -> list:
    from .compare.worker import EvalTask

    return [EvalTask(policy="oracle", seed=int(s), env_config=config, eval_every=None,  # type: ignore[arg-type]
                     policy_options={"choice": c})
            for c in choices for s in seeds]


def _score(tasks: list, jobs: int, progress: bool, desc: str,
           executor: Optional[ExecutorOptions] = None) -> Dict[Tuple[Optional[int], str, int], float]:
    """Validation accuracy of every task, keyed by (instance, candidate json, seed)."""
    from tqdm.auto import tqdm

    from .compare.worker import run_task

    out: Dict[Tuple[Optional[int], str, int], float] = {}
    with tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False) as bar:
        for task, result, error in execute(run_task, tasks, executor, jobs):
            if error is not None:
                raise error
            key = (task.env_config.instance, json.dumps(task.policy_options["choice"], sort_keys=True), task.seed)
            out[key] = float(result["result"]["val_acc"])
            bar.update()
    return out


def _rank(choices: List[Dict[str, Any]], scores: Dict[Tuple[Optional[int], str, int], float], seeds: Sequence[int],
          instance: Optional[int] = None) -> list:
    rows = []
    for c in choices:
        vals = [scores[(instance, json.dumps(c, sort_keys=True), int(s))] for s in seeds]
        rows.append({"choice": c, "val_acc": vals, "mean_val_acc": float(np.mean(vals))})
    return sorted(rows, key=lambda r: -r["mean_val_acc"])


def search(config: EnvConfig, seeds: Sequence[int] = SEARCH_SEEDS, jobs: int = 1, progress: bool = True,
           executor: Optional[ExecutorOptions] = None) -> Dict[str, Any]:
    """Search the oracle of `config`'s scenario (see the module docstring); the result dict is what
    `load_or_search` caches: the ranked candidates, the oracle's `choice`, and the best constant."""
    if config.scenario is None:
        raise ConfigError("oracle: needs a scenario (--scenarios NAME or --env scenario=NAME)")
    sc = get_scenario(config.scenario)
    seeds = [int(s) for s in seeds]
    cfg = config.replace(show_progress=False)
    if sc.oracle == "instance":
        # One search student per (instance, candidate): 10 instances x 7 candidates already cost 70
        # episodes, and the candidates of a pool differ by far more than one student's noise.
        seeds = seeds[:1]
        _, test = instance_sets(len(cfg.teachers), cfg.pool_size, cfg.instance_seed)
        grid = candidates(sc.name, cfg.pool_size)
        # Every instance's candidates in one job list: one pool of workers for the whole search.
        tasks = [t for i in range(len(test)) for t in _tasks(cfg.replace(instance_set="test", instance=i), grid, seeds)]
        scores = _score(tasks, jobs, progress, f"oracle {sc.name}", executor)
        per_instance = {f"test:{i}": _rank(grid, scores, seeds, i) for i in range(len(test))}
        best = {k: rows[0]["choice"]["w"] for k, rows in per_instance.items()}

        def mean_over_instances(choice: Dict[str, Any]) -> float:
            return float(np.mean([next(r["mean_val_acc"] for r in rows if r["choice"] == choice)
                                  for rows in per_instance.values()]))

        # The best *constant* action over instances: one weighting of the pool positions for all.
        overall = max(grid, key=mean_over_instances)
        uniform = {"kind": "constant", "w": [1.0 / cfg.pool_size] * cfg.pool_size}
        return {"scenario": sc.name, "seeds": seeds, "kind": "instance", "per_instance": per_instance,
                "choice": {"kind": "instance", "by_instance": best},
                "best_constant": overall, "best_constant_mean_val_acc": mean_over_instances(overall),
                "mean_val_acc": float(np.mean([rows[0]["mean_val_acc"] for rows in per_instance.values()])),
                "aver_mean_val_acc": mean_over_instances(uniform)}
    grid = candidates(sc.name, len(cfg.teachers))
    ranked = _rank(grid, _score(_tasks(cfg, grid, seeds), jobs, progress, f"oracle {sc.name}", executor), seeds)
    constants = [r for r in ranked if r["choice"]["kind"] == "constant"]
    uniform = [1.0 / len(cfg.teachers)] * len(cfg.teachers)
    return {"scenario": sc.name, "seeds": seeds, "kind": sc.oracle, "candidates": ranked,
            "choice": ranked[0]["choice"], "mean_val_acc": ranked[0]["mean_val_acc"],
            "best_constant": constants[0]["choice"], "best_constant_mean_val_acc": constants[0]["mean_val_acc"],
            "aver_mean_val_acc": next(r["mean_val_acc"] for r in ranked if r["choice"].get("w") == uniform)}


def load_or_search(config: EnvConfig, seeds: Sequence[int] = SEARCH_SEEDS, jobs: int = 1, progress: bool = True,
                   refresh: bool = False, cache_dir: Optional[str] = None,
                   executor: Optional[ExecutorOptions] = None) -> Dict[str, Any]:
    """The cached oracle of `config` (searched and written first when missing or `refresh`)."""
    path = oracle_path(config, seeds, cache_dir)
    if path.is_file() and not refresh:
        return json.loads(path.read_text())
    result = search(config, seeds, jobs, progress, executor)
    result["config"] = config.to_dict()
    atomic_write_text(path, json.dumps(result, indent=1, default=str))
    return result


def scenario_list(text: Sequence[str]) -> List[str]:
    """Scenario names from comma/space separated words; "all" = every classification scenario
    (`mtkd_env.scenarios.suite`; the dense tasks' are named explicitly)."""
    names = [n for word in text for n in str(word).replace(",", " ").split()]
    if names == ["all"]:
        return suite()
    for n in names:
        get_scenario(n)  # unknown -> ConfigError with did-you-mean
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m baselines.oracle",
                       description="search and cache each scenario's oracle weighting (on validation)")
    p.add_argument("--scenarios", nargs="+", default=["all"], metavar="NAMES",
                   help="scenario names (comma or space separated) or 'all' (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEARCH_SEEDS), metavar="SEED",
                   help=f"search seeds (default: {' '.join(map(str, SEARCH_SEEDS))}); keep them disjoint from "
                        f"evaluation seeds")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default: 1)")
    p.add_argument("--refresh", action="store_true", help="search again even if a cached result exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_options(p, ExecutorOptions)
    add_env_flags(p)
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["jobs"] < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, got {args['jobs']}")
    if any(s < 0 for s in args["seeds"]):
        raise ConfigError(f"--seeds: expected non-negative integers, got {args['seeds']}")
    overrides = env_config_data(args)
    for name in scenario_list(args["scenarios"]):
        config = EnvConfig.from_dict({**overrides, "scenario": name})
        res = load_or_search(config, args["seeds"], args["jobs"], args["progress"], args["refresh"],
                             executor=options_from(ExecutorOptions, args))
        line = f"{name}: oracle {json.dumps(res['choice'])[:120]} val {res['mean_val_acc']:.4f}"
        if "best_constant" in res:
            line += f"; best constant {res['best_constant']['w']} val {res['best_constant_mean_val_acc']:.4f}"
        say(line + f"; AVER val {res['aver_mean_val_acc']:.4f}  [{oracle_path(config, args['seeds'])}]")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
