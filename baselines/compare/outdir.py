"""The output-folder protocol: compare.json (settings, job list, teachers, agents), results.csv,
runs/*.json; what a rerun may reuse and what it must refuse."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mtkd_env.runtime.files import atomic_write_text, check_output_dir

from .options import DEFAULT_ORACLE_SEEDS, CompareError, CompareOptions

__all__ = ["settings_of", "settings_diff", "describe_jobs", "jobs_record", "check_out", "open_out",
           "remove_if_empty", "read_meta",
           "env_info", "record_env_and_agents", "module_fingerprint", "path_fingerprint", "read_rows", "write_rows",
           "result_row", "run_file"]


def settings_of(opts: CompareOptions) -> Dict[str, Any]:
    """What every row of one output folder must share (policies and seeds may grow)."""
    saved = {"env_config": opts.env_config.to_dict(), "eval_every": opts.eval_every,
             "normalization": opts.normalization, "aekd_cap": opts.aekd_cap,
             "train_seeds": opts.train_seeds, "train_timesteps": opts.train_timesteps}
    if tuple(opts.oracle_seeds) != DEFAULT_ORACLE_SEEDS:  # recorded when not the default: older folders still match
        saved["oracle_seeds"] = list(opts.oracle_seeds)
    return json.loads(json.dumps(saved, default=str))


_NO_EFFECT_FIELDS = ("show_progress",)
"""EnvConfig fields that cannot change a run's result."""


def settings_diff(saved: Dict[str, Any], now: Dict[str, Any], ignore: Sequence[str] = ()) -> List[str]:
    """Human-readable differences; env fields absent from the saved config (added to EnvConfig
    later, so the saved rows ran with their default) are not differences, nor env fields in `ignore`."""
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k != "env_config" and saved.get(k) != v]
    saved_env = saved.get("env_config", {})
    skip = set(_NO_EFFECT_FIELDS) | set(ignore)
    diff += [f"env {k}: {saved_env[k]!r} -> {v!r}" for k, v in now["env_config"].items()
             if k in saved_env and k not in skip and saved_env[k] != v]
    return diff


def describe_jobs(record: Dict[str, Any]) -> str:
    if record.get("shard"):
        return f"shard {record['shard']} of policies {record['policies']} x seeds {record['seeds']}"
    return "an unsharded comparison"


def jobs_record(opts: CompareOptions, shard: Optional[Tuple[int, int]]) -> Dict[str, Any]:
    """The job list this folder's runs come from: `--merge` rebuilds the whole list from it."""
    return {"policies": list(opts.policies), "seeds": list(opts.seeds),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "command": opts.command}


def check_out(opts: CompareOptions, shard: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """compare.json's content for this run (with its job record) from `opts.out` (new or reopened);
    a `CompareError` for a folder made with other settings or by another shard. Writes nothing."""
    out = check_output_dir(opts.out, "--out")
    meta_path = out / "compare.json"
    settings = settings_of(opts)
    jobs = jobs_record(opts, shard)
    meta = read_meta(meta_path) if meta_path.is_file() else None
    if meta is not None and "env_info" not in meta and not any((out / "runs").glob("*.json")):
        meta = None  # an earlier invocation failed before building its env: nothing to protect
    if meta is not None:
        diff = settings_diff(meta["settings"], settings)
        if diff:
            raise CompareError(f"{str(out)!r} holds results made with other settings ({'; '.join(diff)}); "
                               f"use a new --out to compare under other settings")
        before = meta.get("jobs")
        # A shard's slice depends on the whole job list: a folder holds one shard of one list.
        if before is not None and (before.get("shard") or jobs["shard"]) and (
                before.get("shard") != jobs["shard"]
                or (jobs["shard"] and (before["policies"], before["seeds"]) != (jobs["policies"], jobs["seeds"]))):
            raise CompareError(f"{str(out)!r} holds the rows of {describe_jobs(before)}, not of "
                               f"{describe_jobs(jobs)}; give every shard (and an unsharded run) its own --out")
    else:
        group = f"compare-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        meta = {"settings": settings, "wandb_group": group}
    meta["jobs"] = jobs
    return meta


def open_out(opts: CompareOptions, meta: Dict[str, Any]) -> None:
    """Create `opts.out` (and runs/) and write `check_out`'s compare.json into it."""
    out = Path(opts.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(meta, indent=1))


def remove_if_empty(out: Path) -> None:
    """Undo `open_out` for a folder this run created and left without any result (compare.json
    and an empty runs/ only)."""
    runs = out / "runs"
    if not out.is_dir() or (runs.is_dir() and any(runs.iterdir())):
        return
    if {p.name for p in out.iterdir()} <= {"compare.json", "runs"}:
        shutil.rmtree(out, ignore_errors=True)


def read_meta(path: Path) -> Dict[str, Any]:
    """compare.json's content; a clear `CompareError` if it is not a settings record."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"{str(path)!r} is not a valid compare.json ({str(exc).splitlines()[0]}); "
                           f"use a new --out") from None
    if not isinstance(meta, dict) or "settings" not in meta:
        raise CompareError(f"{str(path)!r} is not a valid compare.json (no 'settings' record); use a new --out")
    return meta


def env_info(env) -> Dict[str, Any]:
    """What the report needs from the env, and what tells whether two folders used the same
    teachers (their weights' fingerprints), so that `--merge` needs no env and no teacher files."""
    return {"teacher_names": list(env.teacher_names), "teacher_val_acc": [float(a) for a in env.teacher_val_acc],
            "teacher_fingerprints": [module_fingerprint(t.model) for t in env.engine.teachers],
            "total_steps": int(env.total_steps)}


def record_env_and_agents(opts: CompareOptions, meta: Dict[str, Any], env_info: Dict[str, Any],
            agents: Dict[str, Dict[int, str]]) -> None:
    meta["env_info"] = env_info
    known = meta.setdefault("agents", {})
    for algo, paths in agents.items():
        known.setdefault(algo, {}).update({str(ts): path_fingerprint(p) for ts, p in paths.items()})
    atomic_write_text(Path(opts.out) / "compare.json", json.dumps(meta, indent=1))


def module_fingerprint(module) -> str:
    """sha256 (16 hex digits) of a module's state dict, names and bytes: equal iff the weights are."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def path_fingerprint(path: str) -> str:
    """sha256 (16 hex digits) of a file, or of a folder's files (relative names and contents)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: List[Dict[str, Any]]) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def result_row(done: Dict[str, Any]) -> Dict[str, Any]:
    r, names = done["result"], done["teacher_names"]
    steps_per_s = r["steps"] / r["policy_s"] if r["policy_s"] > 0 else float("nan")
    row: Dict[str, Any] = {
        "policy": done["policy"], "seed": done["seed"],
        "agent_seed": "" if done["agent_seed"] is None else done["agent_seed"],
        "test_acc": f"{r['test_acc']:.6f}", "val_acc": f"{r['val_acc']:.6f}",
        "best_val_acc": f"{max(r['curve_val_acc']):.6f}", "steps": r["steps"], "diverged": r["diverged"],
        "policy_s": f"{r['policy_s']:.3f}", "steps_per_s": f"{steps_per_s:.2f}"}
    row.update({f"w_logit[{n}]": f"{w:.5f}" for n, w in zip(names, r["mean_w_logit"])})
    row.update({f"w_feat[{n}]": f"{w:.5f}" for n, w in zip(names, r["mean_w_feat"])})
    return row


def run_file(out: Path, policy: str, seed: int) -> Path:
    return out / "runs" / f"{policy}__seed{seed}.json"
