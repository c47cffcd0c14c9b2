"""`python -m baselines.compare --merge DIR [DIR ...] --out OUT`: one comparison from shard folders.

Each input is an output folder of `baselines.compare` (a `--shard I/N` slice, an unsharded run, a
torchrun run or an earlier merge). The merge needs no env, data or teacher files: every folder's
compare.json records its settings, its job list and its teachers' weight fingerprints. It

1. refuses folders made with other settings (naming the field), other teachers (by weights, so a
   teacher trained separately on another machine is caught), other RL agent files, or shards cut
   from other job lists;
2. takes the union of the job lists, keeps the first row of every (policy, seed) found (a row
   present in several folders is reported if its test accuracy differs), and refuses to write a
   summary with runs missing (naming the shards that should hold them);
3. writes results.csv, runs/*.json, summary.md, curves.png, weights.png and compare.json into OUT,
   exactly as one unsharded run of the whole job list would (OUT can be resumed or merged again).

Location fields may differ between machines (data_dir, teacher_cache_dir, device): teacher identity
is checked by weights instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from mtkd_env.config import ConfigError, EnvConfig
from mtkd_env.runtime.files import atomic_write_text

from .. import report
from .jobs import Job, job_list, parse_shard, shard_of
from .options import CompareError, CompareOptions
from .outdir import describe_jobs, read_meta, read_rows, run_file, settings_diff, write_rows
from .summary import write_report

__all__ = ["merge_outputs", "LOCATION_FIELDS"]

LOCATION_FIELDS = ("data_dir", "teacher_cache_dir", "device")
"""EnvConfig fields that may differ between the machines of one comparison."""

_ACC_TOLERANCE = 1e-6


@dataclass
class _Folder:
    path: Path
    meta: Dict[str, Any]
    rows: List[Dict[str, str]]

    @property
    def jobs(self) -> Dict[str, Any]:
        return self.meta["jobs"]

    @property
    def info(self) -> Dict[str, Any]:
        return self.meta["env_info"]


def _load(path: Path) -> _Folder:
    meta_path = path / "compare.json"
    if not meta_path.is_file():
        raise CompareError(f"--merge: {str(path)!r} is not a baselines.compare output folder (no compare.json)")
    meta = read_meta(meta_path)
    for key in ("jobs", "env_info"):
        if key not in meta:
            raise CompareError(f"--merge: {str(path)!r} has no {key!r} record (its run stopped before building the "
                               f"env, or an older baselines.compare wrote it); rerun its command (finished rows are "
                               f"kept), then merge")
    return _Folder(path, meta, read_rows(path / "results.csv"))


def _check_same(a: _Folder, b: _Folder) -> None:
    """Raise if `b` cannot be merged with `a`, naming the first thing that differs."""
    where = f"cannot merge {str(b.path)!r} with {str(a.path)!r}"
    diff = settings_diff(a.meta["settings"], b.meta["settings"], ignore=LOCATION_FIELDS)
    if diff:
        raise CompareError(f"{where}: made with other settings ({'; '.join(diff)})")
    ia, ib = a.info, b.info
    if ia["teacher_names"] != ib["teacher_names"]:
        raise CompareError(f"{where}: other teachers (teacher_names {ia['teacher_names']} -> {ib['teacher_names']})")
    for name, fa, fb in zip(ia["teacher_names"], ia["teacher_fingerprints"], ib["teacher_fingerprints"]):
        if fa != fb:
            raise CompareError(f"{where}: teacher {name!r} has other weights (fingerprint {fa} -> {fb}); every "
                               f"shard must distil from the same teacher files (share teacher_cache_dir or copy it)")
    if ia["total_steps"] != ib["total_steps"]:
        raise CompareError(f"{where}: other episode length (total_steps {ia['total_steps']} -> {ib['total_steps']})")
    agents_a, agents_b = a.meta.get("agents", {}), b.meta.get("agents", {})
    for algo in sorted(set(agents_a) & set(agents_b)):
        for seed in sorted(set(agents_a[algo]) & set(agents_b[algo])):
            if agents_a[algo][seed] != agents_b[algo][seed]:
                raise CompareError(f"{where}: the {algo} agent of train seed {seed} has other files (fingerprint "
                                   f"{agents_a[algo][seed]} -> {agents_b[algo][seed]}); give every shard the same "
                                   f"--agent-dir")
    ja, jb = a.jobs, b.jobs
    if ja.get("shard") and jb.get("shard"):
        for key, va, vb in (("policies", ja["policies"], jb["policies"]), ("seeds", ja["seeds"], jb["seeds"]),
                            ("shard count", parse_shard(ja["shard"])[1], parse_shard(jb["shard"])[1])):
            if va != vb:
                raise CompareError(f"{where}: shards of different job lists ({key} {va} -> {vb}); run every shard "
                                   f"with the same --policies, --seeds and N")


def _union(lists: Sequence[Sequence[Any]]) -> List[Any]:
    return list(dict.fromkeys(x for items in lists for x in items))


def _missing_hint(missing: List[Job], folders: List[_Folder]) -> str:
    sharded = [f for f in folders if f.jobs.get("shard")]
    if sharded:
        jobs = job_list(sharded[0].jobs["policies"], sharded[0].jobs["seeds"])
        count = parse_shard(sharded[0].jobs["shard"])[1]
        shards = sorted({shard_of(jobs.index(j), len(jobs), count) for j in missing if j in jobs})
        if shards:
            return (f"shard(s) {', '.join(f'{i}/{count}' for i in shards)} have not finished or their folders were "
                    f"not given; rerun them (they resume) and merge again")
    return "rerun the comparison that should hold them (it resumes) and merge again"


def merge_outputs(dirs: Sequence[str], out: str, command: str = "") -> List[report.PolicyStats]:
    """Merge `baselines.compare` output folders into `out`; returns the merged statistics."""
    if not dirs:
        raise CompareError("--merge: expected at least one output folder")
    paths = list(dict.fromkeys(Path(d) for d in dirs))
    target = Path(out)
    if any(p.resolve() == target.resolve() for p in paths):
        raise CompareError(f"--out {out!r} is one of the --merge folders; merge into a new folder")
    folders = [_load(p) for p in paths]
    first = folders[0]
    for other in folders[1:]:
        _check_same(first, other)

    policies = _union([f.jobs["policies"] for f in folders])
    seeds = _union([f.jobs["seeds"] for f in folders])
    jobs = job_list(policies, seeds)
    wanted = set(jobs)
    kept: Dict[Job, Tuple[Dict[str, str], _Folder]] = {}
    for folder in folders:
        for row in folder.rows:
            key = (row["policy"], int(row["seed"]))
            if key not in wanted:
                continue
            if key not in kept:
                kept[key] = (row, folder)
            elif abs(float(row["test_acc"]) - float(kept[key][0]["test_acc"])) > _ACC_TOLERANCE:
                print(f"warning: {key[0]} seed {key[1]} differs between {str(kept[key][1].path)!r} (test acc "
                      f"{kept[key][0]['test_acc']}) and {str(folder.path)!r} ({row['test_acc']}); keeping the first",
                      file=sys.stderr)
    missing = [j for j in jobs if j not in kept]
    if missing:
        names = ", ".join(f"{p} seed {s}" for p, s in missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CompareError(f"--merge: {len(missing)} of {len(jobs)} runs are missing ({names}): "
                           f"{_missing_hint(missing, folders)}")
    for (policy, seed), (_, folder) in kept.items():
        if not run_file(folder.path, policy, seed).is_file():
            raise CompareError(f"--merge: {str(run_file(folder.path, policy, seed))!r} is missing (the curves of "
                               f"a row of results.csv); rerun that folder's command and merge again")

    settings = first.meta["settings"]
    try:
        env_config = EnvConfig.from_dict(settings["env_config"])
    except ConfigError as exc:
        raise CompareError(f"--merge: the env config in {str(first.path / 'compare.json')!r} is not valid here: "
                           f"{exc}") from None
    _prepare_target(target, settings)
    for (policy, seed), (_, folder) in kept.items():
        atomic_write_text(run_file(target, policy, seed), run_file(folder.path, policy, seed).read_text())
    rows = [kept[j][0] for j in jobs]
    write_rows(target / "results.csv", rows)
    agents: Dict[str, Dict[str, str]] = {}
    for folder in folders:
        for algo, entries in folder.meta.get("agents", {}).items():
            agents.setdefault(algo, {}).update(entries)
    meta = {"settings": settings, "wandb_group": first.meta["wandb_group"],
            "jobs": {"policies": policies, "seeds": seeds, "shard": None, "command": command},
            "env_info": first.info, "agents": agents, "merged_from": [str(p.resolve()) for p in paths]}
    atomic_write_text(target / "compare.json", json.dumps(meta, indent=1))
    opts = CompareOptions(policies=policies, seeds=seeds, env_config=env_config, out=str(target),
                          eval_every=settings["eval_every"], normalization=settings["normalization"],
                          aekd_cap=settings["aekd_cap"], train_seeds=settings["train_seeds"],
                          train_timesteps=settings["train_timesteps"], progress=False, command=command)
    sources = "; ".join(f"`{p}` ({describe_jobs(f.jobs)})" for p, f in zip(paths, folders))
    return write_report(opts, rows, first.info, [f"- merged from {len(folders)} folder(s): {sources}"])


def _prepare_target(target: Path, settings: Dict[str, Any]) -> None:
    """Create `target`, or reuse a previous merge of the same settings (its rows are replaced)."""
    meta_path = target / "compare.json"
    if meta_path.is_file():
        meta = read_meta(meta_path)
        diff = settings_diff(meta["settings"], settings, ignore=LOCATION_FIELDS)
        if diff:
            raise CompareError(f"--out {str(target)!r} holds results made with other settings ({'; '.join(diff)}); "
                               f"merge into a new folder")
        if "merged_from" not in meta:  # its own rows would be replaced by the merged ones
            raise CompareError(f"--out {str(target)!r} holds the results of a comparison run, not of a merge; merge "
                               f"into a new folder")
    target.mkdir(parents=True, exist_ok=True)
    (target / "runs").mkdir(exist_ok=True)
