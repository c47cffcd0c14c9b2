"""`python -m baselines.compare`: rank teacher-weighting policies on the same students and seeds.

    python -m baselines.compare --policies aver,ca-mkd,ebkd,aekd,best,random,no-kd,ppo,mtkd-rl \\
        --seeds 0 1 2 3 4 [--env-config FILE] [--env K=V ...] [--agent-dir DIR] [--wandb MODE] \\
        [--out DIR] [--jobs N]

Fairness: every (policy, seed) run uses the user's env config (plus the policy's `env_overrides`)
and `env.reset(seed=seed)`, which fixes the student's initialisation and the data order, so all
policies train the same students on the same batches for the same number of steps. RL policies
(names from `agents.api.ALGOS`) are trained on `--train-seeds` (or loaded from `--agent-dir`)
first, then evaluated on the same evaluation seeds as the formula policies.

Outputs in `--out`: results.csv (one row per policy x seed), summary.md (mean ± std test accuracy,
paired differences vs AVER with p-values), curves.png (validation accuracy vs step), weights.png
(teacher weights over training), runs/*.json (per-run curves), agents.json (trained agents) and
compare.json (the settings rows were produced with). Rerunning with the same `--out` skips
finished rows, so an interrupted comparison loses at most the runs in flight.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mtkd_env.config import ConfigError, EnvConfig, load_config_file, parse_overrides
from mtkd_env.teachers import CheckpointError

from . import report
from .policies import POLICIES, make_policy
from .weights import NORMALIZATIONS

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "run_compare", "resolve_policies", "main"]

DEFAULT_POLICIES = ("aver", "ca-mkd", "ebkd", "aekd", "best", "random", "no-kd")
REFERENCE = "aver"
WANDB_MODES = ("disabled", "offline", "online")


class CompareError(ValueError):
    """Bad comparison input (unknown policy, missing agent, an --out made with other settings)."""


class RunsFailed(RuntimeError):
    """Some evaluation runs raised; the others were recorded."""


@dataclass
class CompareOptions:
    """Every knob of a comparison; CLI flags map 1:1 onto these fields."""

    policies: List[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    """Formula policy names (`baselines.POLICIES`) and RL algorithm names (`agents.api.ALGOS`)."""
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Evaluation seeds: `env.reset(seed=s)` for every policy (same students, same data order)."""
    env_config: EnvConfig = field(default_factory=EnvConfig)
    """The env every policy is evaluated on (RL policies add their `env_overrides`)."""
    out: str = "compare_out"
    """Output folder; rerunning with the same folder skips finished rows."""
    jobs: int = 1
    """Parallel worker processes for the evaluation runs."""
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
    wandb: str = "disabled"
    """W&B mode: "disabled", "offline" (no network or login needed) or "online"."""
    wandb_project: str = "mtkd-rl"
    wandb_group: Optional[str] = None
    """W&B group of every run (default: kept in compare.json, "compare-<UTC time of the first run>")."""
    progress: bool = True
    """Show progress bars."""
    command: str = ""
    """The command line, written into summary.md."""


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


def _settings_diff(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """Human-readable differences; env fields absent from the saved config (added to EnvConfig
    later, so the saved rows ran with their default) are not differences."""
    diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if k != "env_config" and saved.get(k) != v]
    saved_env = saved.get("env_config", {})
    diff += [f"env {k}: {saved_env[k]!r} -> {v!r}" for k, v in now["env_config"].items()
             if k in saved_env and k not in _NO_EFFECT_FIELDS and saved_env[k] != v]
    return diff


def _open_out(opts: CompareOptions) -> Dict[str, Any]:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    meta_path = out / "compare.json"
    settings = _settings(opts)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        diff = _settings_diff(meta["settings"], settings)
        if diff:
            raise CompareError(f"{str(out)!r} holds results made with other settings ({'; '.join(diff)}); "
                               f"use a new --out to compare under other settings")
    else:
        group = f"compare-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        meta = {"settings": settings, "wandb_group": group}
        _atomic_write(meta_path, json.dumps(meta, indent=1))
    meta["wandb_group"] = opts.wandb_group or meta["wandb_group"]
    return meta


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
    """Run every missing (policy, seed) evaluation, then write the summary and plots."""
    from .evaluate import EvalTask, env_for

    _validate(opts)
    formula, rl = resolve_policies(opts.policies)
    for name in formula:  # e.g. per-sample policies need steps_per_action = 1: fail before any run
        overrides = make_policy(name, **_formula_options(name, opts)).env_overrides
        try:
            opts.env_config.replace(**overrides)
        except ConfigError as exc:
            raise CompareError(f"policy {name!r} needs {overrides}, which this env config rejects: {exc}") from None
    meta = _open_out(opts)
    out = Path(opts.out)
    group = meta["wandb_group"]
    base_env = env_for(opts.env_config)          # trains missing teachers once, before any worker
    agents = _prepare_agents(opts, rl, group) if rl else {}
    if rl and set(opts.seeds) & set(opts.train_seeds):
        print(f"warning: evaluation seeds {sorted(set(opts.seeds) & set(opts.train_seeds))} are also RL "
              f"training seeds; evaluation students are then not fresh for the agents", file=sys.stderr)

    rows_path = out / "results.csv"
    rows = _read_rows(rows_path)
    finished = {(r["policy"], int(r["seed"])) for r in rows}
    tasks = []
    # Seed-major order: an interrupted comparison still has complete seeds (paired across policies).
    for seed in opts.seeds:
        for name in opts.policies:
            if (name, seed) in finished:
                continue
            agent_seed = opts.train_seeds[seed % len(opts.train_seeds)] if name in rl else None
            tasks.append(EvalTask(
                policy=name, seed=seed, env_config=opts.env_config, eval_every=opts.eval_every,
                policy_options=_formula_options(name, opts) if name in formula else {},
                agent_path=agents[name][agent_seed] if name in rl else None, agent_seed=agent_seed,
                wandb_mode=opts.wandb, wandb_project=opts.wandb_project, wandb_group=group,
                wandb_dir=str(out)))

    from tqdm.auto import tqdm

    total = len(opts.policies) * len(opts.seeds)
    failures = []
    with tqdm(total=total, initial=total - len(tasks), desc="compare runs", unit="run",
              disable=not opts.progress) as bar:
        for task, done, exc in _execute(tasks, opts.jobs):
            bar.update(1)
            if exc is not None:
                failures.append(f"{task.policy} seed {task.seed}: {type(exc).__name__}: {exc}")
                bar.write(f"run failed: {failures[-1]}")
                continue
            _atomic_write(_run_file(out, task.policy, task.seed), json.dumps(done["result"]))
            rows.append(_row(done))
            _write_rows(rows_path, rows)          # after each run: an interruption loses nothing
            bar.set_postfix_str(f"{task.policy} seed {task.seed}: test {100 * done['result']['test_acc']:.2f}%")

    stats = _write_report(opts, rows, base_env)
    if failures:
        raise RunsFailed(f"{len(failures)} run(s) failed (their rows are missing; rerun to retry): "
                           + "; ".join(failures))
    return stats


def _write_report(opts: CompareOptions, rows: List[Dict[str, Any]], env) -> List[report.PolicyStats]:
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
    cfg = opts.env_config
    title = f"{cfg.dataset}: {cfg.student} from {len(env.teacher_names)} teachers, {env.total_steps} steps"
    report.plot_curves(curves, str(out / "curves.png"), title=title)
    report.plot_weights(curves, env.teacher_names, str(out / "weights.png"))
    table = report.summary_table(stats, REFERENCE)
    teachers = ", ".join(f"{n} (val {100 * a:.1f}%)" for n, a in zip(env.teacher_names, env.teacher_val_acc))
    text = "\n".join([
        "# Policy comparison", "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{opts.command or 'run_compare(...)'}`",
        f"- env: dataset `{cfg.dataset}`, student `{cfg.student}`, teachers {teachers}; "
        f"{env.total_steps} steps of batch {cfg.batch_size}, feature KD {'on' if cfg.feature_kd else 'off'} "
        f"(alpha {cfg.kd_alpha}, beta {cfg.feat_beta}, T {cfg.kd_temperature})",
        f"- evaluation seeds: {sorted(set(opts.seeds))} (same student init and data order for every policy)",
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
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="evaluation seeds")
    p.add_argument("--env-config", help="YAML/JSON file of EnvConfig fields")
    p.add_argument("--env", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="EnvConfig overrides, e.g. --env max_steps=50 device=cpu")
    p.add_argument("--out", default="compare_out", help="output folder (rerun to resume)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    p.add_argument("--eval-every", type=int, default=10, help="env steps between validation points")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="sum_to_one",
                   help="EBKD/CA-MKD weights: sum to 1, or the original code's effective scale")
    p.add_argument("--aekd-cap", type=float, default=0.6, help="AEKD per-teacher weight cap C")
    p.add_argument("--agent-dir", help="trained agents (DIR/agents.json, DIR/<algo>/seed<k> or DIR/<algo>)")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[1000], help="RL agent training seeds")
    p.add_argument("--train-timesteps", type=int, default=None,
                   help="RL training env steps (None: the algorithm's n_timesteps)")
    p.add_argument("--wandb", choices=WANDB_MODES, default="disabled", help="W&B mode")
    p.add_argument("--wandb-project", default="mtkd-rl")
    p.add_argument("--wandb-group", default=None,
                   help="W&B group (None: the one stored in OUT/compare.json)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def options_from_args(argv: Optional[Sequence[str]] = None) -> CompareOptions:
    args = _parser().parse_args(argv)
    data = load_config_file(args.env_config) if args.env_config else {}
    data.update(parse_overrides(args.env))
    policies = [n.strip() for chunk in args.policies for n in chunk.split(",") if n.strip()]
    command = "python -m baselines.compare " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    return CompareOptions(
        policies=policies, seeds=args.seeds, env_config=EnvConfig.from_dict(data), out=args.out, jobs=args.jobs,
        eval_every=args.eval_every, normalization=args.normalization, aekd_cap=args.aekd_cap,
        agent_dir=args.agent_dir, train_seeds=args.train_seeds, train_timesteps=args.train_timesteps,
        wandb=args.wandb, wandb_project=args.wandb_project, wandb_group=args.wandb_group,
        progress=not args.no_progress, command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        opts = options_from_args(argv)
        run_compare(opts)
    except (ConfigError, CompareError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunsFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
