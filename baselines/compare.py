"""`python -m baselines.compare`: rank teacher-weighting policies on the same students and seeds.

    python -m baselines.compare --policies aver,ca-mkd,ebkd,aekd,best,random,no-kd,ppo,mtkd-rl \\
        --seeds 0 1 2 3 4 5 6 7 8 9 [--env-config FILE] [--env K=V ...] [--agent-dir DIR] [--wandb MODE] \\
        [--out DIR] [--jobs N] [--shard I/N]
    python -m baselines.compare --merge DIR [DIR ...] --out DIR
    python -m baselines.compare --policies ppo --train-only --out AGENTS     # then --agent-dir AGENTS
    torchrun --nproc_per_node 2 -m baselines.compare --policies aver,ebkd ...   # formula policies

Fairness: every (policy, seed) run uses the user's env config (plus the policy's `env_overrides`)
and `env.reset(seed=seed)`, which fixes the student's initialisation and the data order, so all
policies train the same students on the same batches for the same number of steps. RL policies
(names from `agents.api.ALGOS`) are trained on `--train-seeds` (or loaded from `--agent-dir`)
first, then evaluated on the same evaluation seeds as the formula policies.

Outputs in `--out`: results.csv (one row per policy x seed), summary.md (mean ± std test accuracy,
paired differences vs AVER with p-values), curves.png (validation accuracy vs step), weights.png
(teacher weights over training), runs/*.json (per-run curves), agents.json (trained agents) and
compare.json (the settings rows were produced with, the job list, the teachers' weight
fingerprints). Rerunning with the same `--out` skips finished rows, so an interrupted comparison
loses at most the runs in flight.

Spreading a comparison over machines: the job list is the (policy, seed) pairs in seed-major
order (`job_list`); `--shard I/N` (1-based, like Jest/Playwright: 1/N ... N/N) runs the I-th of N
contiguous, near-equal slices of it into its own `--out`, and `--merge` (`baselines.merge`) checks
the shard folders agree and writes the four artefacts of one unsharded run. Shards never train RL
agents: they load them from a shared `--agent-dir` (made once with `--train-only`), so every shard
evaluates the very same agent files.

Under `torchrun` (RANK/WORLD_SIZE set) every rank runs the same episodes, each as one distillation
spread over all ranks (`mtkd_env.distributed`); only rank 0 prints, writes files and logs to W&B.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import pickle
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from mtkd_env.config import ConfigError, EnvConfig, load_config_file, parse_overrides
from mtkd_env.distributed import DistContext
from mtkd_env.teachers import CheckpointError

from . import report
from .policies import POLICIES, make_policy
from .weights import NORMALIZATIONS

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "run_compare", "resolve_policies", "main",
           "job_list", "parse_shard", "shard_jobs"]

DEFAULT_POLICIES = ("aver", "ca-mkd", "ebkd", "aekd", "best", "random", "no-kd")
REFERENCE = "aver"
WANDB_MODES = ("disabled", "offline", "online")

Job = Tuple[str, int]
"""(policy, evaluation seed)."""


class CompareError(ValueError):
    """Bad comparison input (unknown policy, missing agent, an --out made with other settings)."""


class RunsFailed(RuntimeError):
    """Some evaluation runs raised; the others were recorded."""


@dataclass
class CompareOptions:
    """Every knob of a comparison; CLI flags map 1:1 onto these fields."""

    policies: List[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    """Formula policy names (`baselines.POLICIES`) and RL algorithm names (`agents.api.ALGOS`)."""
    seeds: List[int] = field(default_factory=lambda: list(range(10)))
    """Evaluation seeds: `env.reset(seed=s)` for every policy (same students, same data order)."""
    env_config: EnvConfig = field(default_factory=EnvConfig)
    """The env every policy is evaluated on (RL policies add their `env_overrides`)."""
    out: str = "compare_out"
    """Output folder; rerunning with the same folder skips finished rows."""
    jobs: int = 1
    """Parallel worker processes for the evaluation runs (must be 1 under torchrun)."""
    shard: Optional[str] = None
    """"I/N": run only the I-th (1-based) of N contiguous slices of the seed-major job list."""
    eval_every: int = 10
    """Env steps between validation evaluations of the curves (eval mode; no effect on training)."""
    normalization: str = "sum_to_one"
    """EBKD / CA-MKD weights: "sum_to_one" (same KD strength as AVER) or "reference" (the original
    code's effective strength)."""
    aekd_cap: float = 0.6
    """AEKD's per-teacher weight cap C."""
    agent_dir: Optional[str] = None
    """Folder of trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>) instead of training."""
    train_seeds: List[int] = field(default_factory=lambda: [1000])
    """Seeds of RL agent training; evaluation seed s uses the agent of train_seeds[s % len]."""
    train_timesteps: Optional[int] = None
    """RL training budget in env steps (None: the algorithm's default)."""
    train_only: bool = False
    """Train (or reuse) the RL policies' agents into `out` and stop; shards load them with --agent-dir."""
    wandb: str = "disabled"
    """W&B mode: "disabled", "offline" (no network or login needed) or "online"."""
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    """W&B group of every run (default: kept in compare.json, "compare-<UTC time of the first run>")."""
    progress: bool = True
    """Show progress bars."""
    command: str = ""
    """The command line, written into summary.md."""


# --- the job list and its shards ----------------------------------------------------------------
def job_list(policies: Sequence[str], seeds: Sequence[int]) -> List[Job]:
    """Every (policy, seed) pair, seed-major: an interrupted or partial comparison still has
    complete seeds (paired across policies)."""
    return [(p, int(s)) for s in seeds for p in policies]


def parse_shard(text: str) -> Tuple[int, int]:
    """"I/N" -> (I, N) with 1 <= I <= N; a one-line `CompareError` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    expected = "expected I/N with 1 <= I <= N (1-based: --shard 1/4 ... --shard 4/4)"
    if not match:
        raise CompareError(f"--shard: {expected}, got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise CompareError(f"--shard: {expected}, got {text!r}")
    return index, count


def shard_bounds(n_jobs: int, shard: Tuple[int, int]) -> Tuple[int, int]:
    """[start, end) of shard (I, N) in a job list of `n_jobs`: contiguous, sizes differ by <= 1."""
    index, count = shard
    return (index - 1) * n_jobs // count, index * n_jobs // count


def shard_jobs(jobs: Sequence[Job], shard: Optional[Tuple[int, int]]) -> List[Job]:
    """The slice of `jobs` that shard (I, N) runs (all of them for None)."""
    if shard is None:
        return list(jobs)
    start, end = shard_bounds(len(jobs), shard)
    return list(jobs[start:end])


def shard_of(position: int, n_jobs: int, count: int) -> int:
    """The 1-based shard of N = `count` that runs job `position` of `n_jobs`."""
    return next(i for i in range(1, count + 1) if position < shard_bounds(n_jobs, (i, count))[1])


# --- policies ------------------------------------------------------------------------------------
def _agents_api():
    import importlib

    return importlib.import_module("agents.api")


def resolve_policies(names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split names into (formula, rl); `agents.api` is imported only if a name is not a formula."""
    formula = [n for n in names if n in POLICIES]
    other = [n for n in names if n not in POLICIES]
    if not other:
        return formula, []
    try:
        algos = tuple(_agents_api().ALGOS)
        rl_note = f"RL policies {list(algos)}"
    except Exception as exc:  # agents not installed / broken: still name the formula policies
        algos = ()
        rl_note = f"RL policies need agents.api, which could not be imported ({type(exc).__name__}: {exc})"
    unknown = [n for n in other if n not in algos]
    if unknown:
        raise CompareError(f"unknown policy {unknown[0]!r}; known policies: formula {sorted(POLICIES)}; "
                           f"{rl_note}")
    return formula, other


def _formula_options(name: str, opts: CompareOptions) -> Dict[str, Any]:
    if name in ("ebkd", "ca-mkd"):
        return {"normalization": opts.normalization}
    if name == "aekd":
        return {"cap": opts.aekd_cap}
    return {}


# --- output folder ---------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file + os.replace, so an interruption never leaves a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _settings(opts: CompareOptions) -> Dict[str, Any]:
    """What every row of one output folder must share (policies and seeds may grow)."""
    return json.loads(json.dumps({"env_config": opts.env_config.to_dict(), "eval_every": opts.eval_every,
                                  "normalization": opts.normalization, "aekd_cap": opts.aekd_cap,
                                  "train_seeds": opts.train_seeds, "train_timesteps": opts.train_timesteps},
                                 default=str))


_NO_EFFECT_FIELDS = ("show_progress",)
"""EnvConfig fields that cannot change a run's result."""


def _settings_diff(saved: Dict[str, Any], now: Dict[str, Any], ignore: Sequence[str] = ()) -> List[str]:
    """Human-readable differences; env fields absent from the saved config (added to EnvConfig
    later, so the saved rows ran with their default) are not differences, nor env fields in `ignore`."""
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k != "env_config" and saved.get(k) != v]
    saved_env = saved.get("env_config", {})
    skip = set(_NO_EFFECT_FIELDS) | set(ignore)
    diff += [f"env {k}: {saved_env[k]!r} -> {v!r}" for k, v in now["env_config"].items()
             if k in saved_env and k not in skip and saved_env[k] != v]
    return diff


def _describe_jobs(record: Dict[str, Any]) -> str:
    if record.get("shard"):
        return f"shard {record['shard']} of policies {record['policies']} x seeds {record['seeds']}"
    return "an unsharded comparison"


def _jobs_record(opts: CompareOptions, shard: Optional[Tuple[int, int]]) -> Dict[str, Any]:
    """The job list this folder's runs come from: `--merge` rebuilds the whole list from it."""
    return {"policies": list(opts.policies), "seeds": list(opts.seeds),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "command": opts.command}


def _open_out(opts: CompareOptions, shard: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """Create or reopen `opts.out`; refuse one made with other settings or by another shard.
    Returns compare.json's content (with this run's job record)."""
    out = Path(opts.out)
    meta_path = out / "compare.json"
    settings = _settings(opts)
    jobs = _jobs_record(opts, shard)
    meta = read_meta(meta_path) if meta_path.is_file() else None
    if meta is not None and "env_info" not in meta and not any((out / "runs").glob("*.json")):
        meta = None  # an earlier invocation failed before building its env: nothing to protect
    if meta is not None:
        diff = _settings_diff(meta["settings"], settings)
        if diff:
            raise CompareError(f"{str(out)!r} holds results made with other settings ({'; '.join(diff)}); "
                               f"use a new --out to compare under other settings")
        before = meta.get("jobs")
        # A shard's slice depends on the whole job list: a folder holds one shard of one list.
        if before is not None and (before.get("shard") or jobs["shard"]) and (
                before.get("shard") != jobs["shard"]
                or (jobs["shard"] and (before["policies"], before["seeds"]) != (jobs["policies"], jobs["seeds"]))):
            raise CompareError(f"{str(out)!r} holds the rows of {_describe_jobs(before)}, not of "
                               f"{_describe_jobs(jobs)}; give every shard (and an unsharded run) its own --out")
    else:
        group = f"compare-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        meta = {"settings": settings, "wandb_group": group}
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    meta["jobs"] = jobs
    _atomic_write(meta_path, json.dumps(meta, indent=1))
    return meta


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


def _build_env(config):
    """The env of `config`; user errors (missing data or teachers, bad options) become `CompareError`."""
    from .evaluate import env_for

    try:
        return env_for(config)
    except CheckpointError:
        raise
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise CompareError(f"cannot build the env: {str(exc).splitlines()[0]}") from None


def _env_info(env) -> Dict[str, Any]:
    """What the report needs from the env, and what tells whether two folders used the same
    teachers (their weights' fingerprints), so that `--merge` needs no env and no teacher files."""
    return {"teacher_names": list(env.teacher_names), "teacher_val_acc": [float(a) for a in env.teacher_val_acc],
            "teacher_fingerprints": [module_fingerprint(t.model) for t in env.engine.teachers],
            "total_steps": int(env.total_steps)}


def _record(opts: CompareOptions, meta: Dict[str, Any], env_info: Dict[str, Any],
            agents: Dict[str, Dict[int, str]]) -> None:
    meta["env_info"] = env_info
    known = meta.setdefault("agents", {})
    for algo, paths in agents.items():
        known.setdefault(algo, {}).update({str(ts): path_fingerprint(p) for ts, p in paths.items()})
    _atomic_write(Path(opts.out) / "compare.json", json.dumps(meta, indent=1))


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


def _read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: List[Dict[str, Any]]) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue())


def _row(done: Dict[str, Any]) -> Dict[str, Any]:
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


def _run_file(out: Path, policy: str, seed: int) -> Path:
    return out / "runs" / f"{policy}__seed{seed}.json"


# --- RL agents -----------------------------------------------------------------------------------
def _find_agent(agent_dir: Path, algo: str, train_seed: int) -> Optional[str]:
    manifest = agent_dir / "agents.json"
    if manifest.is_file():
        entry = json.loads(manifest.read_text()).get(algo, {}).get(str(train_seed))
        if entry and (agent_dir / entry).exists():
            return str(agent_dir / entry)
    for candidate in (agent_dir / algo / f"seed{train_seed}", agent_dir / algo):
        if candidate.exists():
            return str(candidate)
    return None


def _prepare_agents(opts: CompareOptions, rl: List[str], group: str) -> Dict[str, Dict[int, str]]:
    """algo -> train seed -> agent path: loaded from --agent-dir, reused from this --out, or trained."""
    out = Path(opts.out)
    manifest_path = out / "agents.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    agents: Dict[str, Dict[int, str]] = {}
    for algo in rl:
        agents[algo] = {}
        for ts in opts.train_seeds:
            if opts.agent_dir is not None:
                path = _find_agent(Path(opts.agent_dir), algo, ts)
                if path is None:
                    raise CompareError(f"no trained {algo!r} agent for train seed {ts} in {opts.agent_dir!r}; "
                                       f"expected {opts.agent_dir}/agents.json, {opts.agent_dir}/{algo}/seed{ts} "
                                       f"or {opts.agent_dir}/{algo} (a run directory or model file)")
            elif str(ts) in manifest.get(algo, {}) and (out / manifest[algo][str(ts)]).exists():
                path = str(out / manifest[algo][str(ts)])
            else:
                print(f"training {algo} (train seed {ts}) ...", file=sys.stderr)
                run_dir = Path(_agents_api().train(
                    algo, env_config=opts.env_config, seed=ts, total_timesteps=opts.train_timesteps,
                    out_dir=str(out / "agents" / algo / f"seed{ts}"), wandb_mode=opts.wandb,
                    wandb_project=opts.wandb_project, wandb_group=group, show_progress=opts.progress))
                manifest.setdefault(algo, {})[str(ts)] = os.path.relpath(run_dir.resolve(), out.resolve())
                _atomic_write(manifest_path, json.dumps(manifest, indent=1))
                path = str(run_dir)
            agents[algo][ts] = path
    return agents


# --- torchrun ------------------------------------------------------------------------------------
def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _join_torchrun(opts: CompareOptions, rl: List[str]) -> DistContext:
    """Under torchrun, every rank runs the same episodes in this process, each one distillation
    spread over all ranks; check the options allow that, then join the process group."""
    from mtkd_env.distributed import init_from_env

    if not _launched_by_torchrun():
        return DistContext()
    if opts.jobs != 1:
        raise CompareError(f"--jobs: under torchrun every rank runs the same episodes in this process, so --jobs "
                           f"must be 1, got {opts.jobs}")
    if rl:
        raise CompareError(f"under torchrun baselines.compare runs formula policies only, got RL policies {rl}; "
                           f"evaluate them in a 1-process comparison with the same --env and combine the "
                           f"folders with --merge")
    return init_from_env(opts.env_config.device)


def _rank0(ctx: DistContext, fn: Callable[[], Any], *, then_others: bool = False) -> Any:
    """`fn()` on rank 0 first; every rank gets rank 0's (picklable) result, or, with `then_others`,
    calls `fn()` itself once rank 0 is done (e.g. building the env after rank 0 trained missing
    teachers into the shared cache). An error on rank 0 is raised on every rank, so no rank is
    left waiting in a collective."""
    if not ctx.enabled:
        return fn()
    import torch.distributed as dist

    outcome: List[Any] = [None]
    if ctx.is_main:
        try:
            value = fn()
        except Exception as exc:
            dist.broadcast_object_list([("error", _picklable(exc))], src=0)
            raise
        dist.broadcast_object_list([("ok", None if then_others else value)], src=0)
        return value
    dist.broadcast_object_list(outcome, src=0)
    status, payload = outcome[0]
    if status == "error":
        raise payload
    return fn() if then_others else payload


def _picklable(exc: Exception) -> Exception:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# --- running -------------------------------------------------------------------------------------
def _execute(tasks: list, jobs: int) -> Iterator[Tuple[Any, Optional[dict], Optional[BaseException]]]:
    """Yield (task, result, error) as runs finish; in-process for one job, else spawned workers."""
    from .evaluate import init_worker, run_task

    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            try:
                yield task, run_task(task), None
            except Exception as exc:  # one broken run must not lose the others
                yield task, None, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: forked workers cannot use CUDA and would inherit the parent's torch threads.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_task, task): task for task in tasks}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_compare(opts: CompareOptions) -> List[report.PolicyStats]:
    """Run every missing (policy, seed) evaluation of this shard, then write the summary and plots.

    Under torchrun every rank runs the same episodes; only rank 0 writes files, prints and logs to
    W&B, and the other ranks return the same statistics without writing anything. There a failing
    run stops the comparison (finished rows are kept) instead of being skipped on one rank only.
    """
    from .evaluate import EvalTask

    _validate(opts)
    formula, rl = resolve_policies(opts.policies)
    for name in formula:  # e.g. per-sample policies need steps_per_action = 1: fail before any run
        overrides = make_policy(name, **_formula_options(name, opts)).env_overrides
        try:
            opts.env_config.replace(**overrides)
        except ConfigError as exc:
            raise CompareError(f"policy {name!r} needs {overrides}, which this env config rejects: {exc}") from None
    shard = parse_shard(opts.shard) if opts.shard is not None else None
    if opts.train_only and not rl:
        raise CompareError(f"--train-only: no RL policy to train among {opts.policies}")
    if shard is not None and rl and opts.agent_dir is None:
        raise CompareError(f"--shard with RL policies {rl} needs --agent-dir, so that every shard evaluates the same "
                           f"agents: train them once with --train-only --out AGENTS (same --policies/--env/"
                           f"--train-seeds), then give every shard --agent-dir AGENTS")
    ctx = _join_torchrun(opts, rl)
    say = print if ctx.is_main else (lambda *a, **k: None)
    meta = _rank0(ctx, lambda: _open_out(opts, shard))
    out = Path(opts.out)
    group = opts.wandb_group or meta["wandb_group"]
    base_env = _rank0(ctx, lambda: _build_env(opts.env_config), then_others=True)  # trains missing teachers once
    agents = _prepare_agents(opts, rl, group) if rl else {}
    if ctx.is_main:
        _record(opts, meta, _env_info(base_env), agents)
    if opts.train_only:
        say(f"agents ready in {str(out)!r}: evaluate them with --agent-dir {shlex.quote(str(out))}", file=sys.stderr)
        return []
    if rl and set(opts.seeds) & set(opts.train_seeds):
        say(f"warning: evaluation seeds {sorted(set(opts.seeds) & set(opts.train_seeds))} are also RL "
            f"training seeds; evaluation students are then not fresh for the agents", file=sys.stderr)
    if shard is not None and opts.wandb != "disabled" and opts.wandb_group is None:
        say("warning: W&B runs of a shard go to this folder's own group; pass the same --wandb-group to every "
            "shard to see them together", file=sys.stderr)

    rows_path = out / "results.csv"
    rows = _rank0(ctx, lambda: _read_rows(rows_path))  # rank 0's view, so all ranks run the same tasks
    finished = {(r["policy"], int(r["seed"])) for r in rows}
    all_jobs = job_list(opts.policies, opts.seeds)
    mine = shard_jobs(all_jobs, shard)
    if shard is not None:
        start, end = shard_bounds(len(all_jobs), shard)
        say(f"shard {opts.shard}: runs {start + 1}-{end} of {len(all_jobs)}" if mine else
            f"shard {opts.shard}: no runs (the job list has {len(all_jobs)})", file=sys.stderr)
    tasks = []
    for name, seed in mine:
        if (name, seed) in finished:
            continue
        agent_seed = opts.train_seeds[seed % len(opts.train_seeds)] if name in rl else None
        tasks.append(EvalTask(
            policy=name, seed=seed, env_config=opts.env_config, eval_every=opts.eval_every,
            policy_options=_formula_options(name, opts) if name in formula else {},
            agent_path=agents[name][agent_seed] if name in rl else None, agent_seed=agent_seed,
            wandb_mode=opts.wandb if ctx.is_main else "disabled", wandb_project=opts.wandb_project,
            wandb_group=group, wandb_dir=str(out)))

    from tqdm.auto import tqdm

    failures = []
    with tqdm(total=len(mine), initial=len(mine) - len(tasks), desc="compare runs", unit="run",
              disable=not (opts.progress and ctx.is_main)) as bar:
        for task, done, exc in _execute(tasks, opts.jobs):
            bar.update(1)
            if exc is not None:
                if ctx.enabled:  # a run failed on this rank; skipping it would desynchronise the ranks' collectives
                    raise exc
                failures.append(f"{task.policy} seed {task.seed}: {type(exc).__name__}: {exc}")
                bar.write(f"run failed: {failures[-1]}")
                continue
            rows.append(_row(done))
            if ctx.is_main:
                _atomic_write(_run_file(out, task.policy, task.seed), json.dumps(done["result"]))
                _write_rows(rows_path, rows)      # after each run: an interruption loses nothing
            bar.set_postfix_str(f"{task.policy} seed {task.seed}: test {100 * done['result']['test_acc']:.2f}%")

    wanted = set(mine)
    rows = [r for r in rows if (r["policy"], int(r["seed"])) in wanted]
    notes = []
    if shard is not None:
        notes.append(f"- shard {opts.shard} of the job list (policies x seeds, seed-major): runs {start + 1}-{end} of "
                     f"{len(all_jobs)}; `--merge` the shard folders for the whole comparison")
    if ctx.is_main:
        stats = _write_report(opts, rows, meta["env_info"], notes)
    else:
        stats = report.policy_stats(rows, opts.policies, REFERENCE)
    if failures:
        raise RunsFailed(f"{len(failures)} run(s) failed (their rows are missing; rerun to retry): "
                           + "; ".join(failures))
    return stats


def _write_report(opts: CompareOptions, rows: List[Dict[str, Any]], info: Dict[str, Any],
                  notes: Sequence[str] = ()) -> List[report.PolicyStats]:
    """summary.md, curves.png and weights.png of `rows` (those of `opts.policies` x `opts.seeds`)
    into `opts.out`; `info` is the env's `_env_info` record, `notes` extra summary lines."""
    out = Path(opts.out)
    wanted = [r for r in rows if r["policy"] in opts.policies and int(r["seed"]) in opts.seeds]
    stats = report.policy_stats(wanted, opts.policies, REFERENCE)
    if not stats:
        return stats
    curves: Dict[str, List[dict]] = {}
    for name in opts.policies:
        for seed in opts.seeds:
            path = _run_file(out, name, seed)
            if path.is_file():
                curves.setdefault(name, []).append(json.loads(path.read_text()))
    cfg, names, total_steps = opts.env_config, info["teacher_names"], info["total_steps"]
    title = f"{cfg.dataset}: {cfg.student} from {len(names)} teachers, {total_steps} steps"
    report.plot_curves(curves, str(out / "curves.png"), title=title)
    report.plot_weights(curves, names, str(out / "weights.png"))
    table = report.summary_table(stats, REFERENCE)
    teachers = ", ".join(f"{n} (val {100 * a:.1f}%)" for n, a in zip(names, info["teacher_val_acc"]))
    text = "\n".join([
        "# Policy comparison", "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{opts.command or 'run_compare(...)'}`",
        *notes,
        f"- env: dataset `{cfg.dataset}`, student `{cfg.student}`, teachers {teachers}; "
        f"{total_steps} steps of batch {cfg.batch_size}, feature KD {'on' if cfg.feature_kd else 'off'} "
        f"(alpha {cfg.kd_alpha}, beta {cfg.feat_beta}, T {cfg.kd_temperature})",
        f"- evaluation seeds: {sorted(set(int(r['seed']) for r in wanted))} (same student init and data order "
        f"for every policy)",
        f"- EBKD / CA-MKD normalisation: {opts.normalization}; AEKD cap {opts.aekd_cap}"
        + (f"; RL train seeds {opts.train_seeds}" if any(p not in POLICIES for p in opts.policies) else ""),
        "- test accuracy at the end of the episode; std over seeds (ddof 1); Δ = mean paired difference "
        "to AVER on the same seeds, p-values two-sided", "",
        table, "", report.verdict(stats, REFERENCE), "",
        "Artefacts: `results.csv`, `curves.png` (validation accuracy vs step), `weights.png` "
        "(teacher weights over training), `runs/*.json`.", ""])
    _atomic_write(out / "summary.md", text)
    print(table)
    print(report.verdict(stats, REFERENCE))
    return stats


def _validate(opts: CompareOptions) -> None:
    if not opts.policies:
        raise CompareError("--policies: expected at least one policy name")
    if not opts.seeds:
        raise CompareError("--seeds: expected at least one evaluation seed")
    if opts.jobs < 1:
        raise CompareError(f"--jobs: expected an integer >= 1, got {opts.jobs}")
    if opts.shard is not None:
        parse_shard(opts.shard)
        if opts.train_only:
            raise CompareError("--train-only trains the agents every shard shares: run it once, without --shard")
    if opts.eval_every < 1:
        raise CompareError(f"--eval-every: expected an integer >= 1, got {opts.eval_every}")
    if opts.normalization not in NORMALIZATIONS:
        raise CompareError(f"--normalization: expected one of {list(NORMALIZATIONS)}, got {opts.normalization!r}")
    if not opts.aekd_cap > 0:
        raise CompareError(f"--aekd-cap: expected a number > 0, got {opts.aekd_cap}")
    if opts.wandb not in WANDB_MODES:
        raise CompareError(f"--wandb: expected one of {list(WANDB_MODES)}, got {opts.wandb!r}")
    if not opts.train_seeds:
        raise CompareError("--train-seeds: expected at least one seed")
    opts.policies = list(dict.fromkeys(opts.policies))
    opts.seeds = list(dict.fromkeys(opts.seeds))


# --- CLI -----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m baselines.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policies", nargs="+", default=[",".join(DEFAULT_POLICIES)], metavar="NAMES",
                   help=f"comma-separated policy names: formula {sorted(POLICIES)} and RL algorithms of "
                        f"agents.api.ALGOS (e.g. ppo, mtkd-rl)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)), help="evaluation seeds")
    p.add_argument("--env-config", help="YAML/JSON file of EnvConfig fields")
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="EnvConfig overrides, e.g. --env max_steps=50 device=cpu")
    p.add_argument("--out", default="compare_out", help="output folder (rerun to resume)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (1 under torchrun)")
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="run only the I-th (1-based) of N contiguous slices of the seed-major (policy x seed) "
                        "job list, e.g. --shard ${SLURM_ARRAY_TASK_ID}/4; one --out per shard, then --merge")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="merge finished shard folders into --out (checks they share settings and teachers) "
                        "instead of running")
    p.add_argument("--eval-every", type=int, default=10, help="env steps between validation points")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="sum_to_one",
                   help="EBKD/CA-MKD weights: sum to 1, or the original code's effective scale")
    p.add_argument("--aekd-cap", type=float, default=0.6, help="AEKD per-teacher weight cap C")
    p.add_argument("--agent-dir", help="trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>)")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[1000], help="RL agent training seeds")
    p.add_argument("--train-timesteps", type=int, default=None,
                   help="RL training env steps (None: the algorithm's n_timesteps)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or reuse) the RL policies' agents into --out and stop (for --agent-dir)")
    p.add_argument("--wandb", choices=WANDB_MODES, default="disabled", help="W&B mode")
    p.add_argument("--wandb-project", default="mtkd-rl")
    p.add_argument("--wandb-group", default=None,
                   help="W&B group (None: the one stored in OUT/compare.json)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


_MERGE_FLAGS = ("merge", "out", "no_progress")
"""The flags `--merge` takes: everything else comes from the merged folders."""


def _command(argv: Optional[Sequence[str]]) -> str:
    return "python -m baselines.compare " + shlex.join(list(sys.argv[1:] if argv is None else argv))


def options_from_args(argv: Optional[Sequence[str]] = None) -> CompareOptions:
    return _options(_parser().parse_args(argv), _command(argv))


def _options(args: argparse.Namespace, command: str) -> CompareOptions:
    data = load_config_file(args.env_config) if args.env_config else {}
    data.update(parse_overrides(args.env))
    policies = [n.strip() for chunk in args.policies for n in chunk.split(",") if n.strip()]
    return CompareOptions(
        policies=policies, seeds=args.seeds, env_config=EnvConfig.from_dict(data), out=args.out, jobs=args.jobs,
        shard=args.shard, eval_every=args.eval_every, normalization=args.normalization, aekd_cap=args.aekd_cap,
        agent_dir=args.agent_dir, train_seeds=args.train_seeds, train_timesteps=args.train_timesteps,
        train_only=args.train_only, wandb=args.wandb, wandb_project=args.wandb_project,
        wandb_group=args.wandb_group, progress=not args.no_progress, command=command)


def _merge_from_args(args: argparse.Namespace, command: str) -> None:
    from .merge import merge_outputs

    defaults = vars(_parser().parse_args([]))
    extra = [k for k, v in vars(args).items() if k not in _MERGE_FLAGS and v != defaults[k]]
    if extra:
        raise CompareError(f"--merge takes only --out (settings, policies and seeds come from the merged folders); "
                           f"remove --{extra[0].replace('_', '-')}")
    merge_outputs(args.merge, args.out, command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Under torchrun only rank 0 reports; the other ranks exit with the same status.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        args = _parser().parse_args(argv)
        if args.merge is not None:
            _merge_from_args(args, _command(argv))
        else:
            run_compare(_options(args, _command(argv)))
    except (ConfigError, CompareError, CheckpointError) as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunsFailed as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        from mtkd_env.distributed import leave

        leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
