"""`run_compare`: every missing (policy, seed) run of a comparison, then its summary."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mtkd_env.config import ConfigError
from mtkd_env.runtime.distributed import DistContext
from mtkd_env.runtime.executors import execute
from mtkd_env.runtime import collective
from mtkd_env.runtime.files import atomic_write_text

from .. import report
from ..policies import make_policy
from .jobs import job_list, parse_shard, shard_bounds, shard_jobs
from .options import REFERENCE, CompareError, CompareOptions, RunsFailed
from .outdir import (check_out, env_info, open_out, read_rows, record_env_and_agents, remove_if_empty, result_row,
                     run_file, write_rows)
from .resolve import formula_options, resolve_policies
from .rl_agents import prepare_agents
from .summary import log_ranking, write_report
from .worker import EvalTask, build_env, run_task

__all__ = ["run_compare"]


def run_compare(opts: CompareOptions) -> List[report.PolicyStats]:
    """Run every missing (policy, seed) evaluation of this shard, then write the summary and plots.

    Nothing is written until the inputs are checked and the env is built; a new output folder that
    ends without any result is removed again. Under torchrun every rank runs the same episodes; only
    rank 0 writes files, prints and logs to W&B, and the other ranks return the same statistics
    without writing anything. There a failing run stops the comparison (finished rows are kept)
    instead of being skipped on one rank only.
    """
    formula, rl, shard = _check(opts)
    ctx = _join(opts, rl)
    out = Path(opts.out)
    created = not out.exists()
    try:
        return _run(opts, formula, rl, shard, ctx)
    except BaseException:
        if created and ctx.is_main:
            remove_if_empty(out)
        raise


def _check(opts: CompareOptions) -> Tuple[List[str], List[str], Optional[Tuple[int, int]]]:
    """Everything about the options that needs no env: (formula policies, RL policies, shard)."""
    dataclasses.replace(opts)  # validated again: the fields may have been edited since
    shard = parse_shard(opts.shard) if opts.shard is not None else None
    opts.executor.check_workers(opts.jobs)
    if shard is not None and opts.train_only:
        raise CompareError("--train-only trains the agents every shard shares: run it once, without --shard")
    formula, rl = resolve_policies(opts.policies)
    for name in formula:  # e.g. per-sample policies need steps_per_action = 1: fail before any run
        overrides = make_policy(name, **formula_options(name, opts)).env_overrides
        try:
            opts.env_config.replace(**overrides)
        except ConfigError as exc:
            raise CompareError(f"policy {name!r} needs {overrides}, which this env config rejects: {exc}") from None
    if opts.train_only and not rl:
        raise CompareError(f"--train-only: no RL policy to train among {opts.policies}")
    if shard is not None and rl and opts.agent_dir is None:
        raise CompareError(f"--shard with RL policies {rl} needs --agent-dir, so that every shard evaluates the same "
                           f"agents: train them once with --train-only --out AGENTS (same --policies/--env/"
                           f"--train-seeds), then give every shard --agent-dir AGENTS")
    return formula, rl, shard


def _join(opts: CompareOptions, rl: List[str]) -> DistContext:
    """Under torchrun, every rank runs the same episodes in this process, each one distillation
    spread over all ranks; check the options allow that, then join the process group."""
    if not collective.launched_by_torchrun():
        return DistContext()
    if opts.jobs != 1:
        raise CompareError(f"--jobs: under torchrun every rank runs the same episodes in this process, so --jobs "
                           f"must be 1, got {opts.jobs}")
    if opts.executor.backend != "local":
        raise CompareError(f"--backend {opts.executor.backend}: under torchrun every rank runs the episodes in this "
                           f"process; launch torchrun without --backend")
    if rl:
        raise CompareError(f"under torchrun baselines.compare runs formula policies only, got RL policies {rl}; "
                           f"evaluate them in a 1-process comparison with the same --env and combine the "
                           f"folders with --merge")
    return collective.join(opts.env_config.device)


def _run(opts: CompareOptions, formula: List[str], rl: List[str], shard: Optional[Tuple[int, int]],
         ctx: DistContext) -> List[report.PolicyStats]:
    say = print if ctx.is_main else (lambda *a, **k: None)
    meta = collective.on_rank0(ctx, lambda: check_out(opts, shard))
    out = Path(opts.out)
    group = opts.wandb_group or meta["wandb_group"]
    # Rank 0 first: it trains missing teachers into the shared cache once.
    base_env = collective.everywhere(ctx, lambda: build_env(opts.env_config), rank0_first=True)
    if ctx.is_main:
        open_out(opts, meta)
    agents = prepare_agents(opts, rl, group) if rl else {}
    if ctx.is_main:
        record_env_and_agents(opts, meta, env_info(base_env), agents)
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
    rows = collective.on_rank0(ctx, lambda: read_rows(rows_path))  # rank 0's view: all ranks run the same tasks
    all_jobs = job_list(opts.policies, opts.seeds)
    mine = shard_jobs(all_jobs, shard)
    notes = []
    if shard is not None:
        start, end = shard_bounds(len(all_jobs), shard)
        say(f"shard {opts.shard}: runs {start + 1}-{end} of {len(all_jobs)}" if mine else
            f"shard {opts.shard}: no runs (the job list has {len(all_jobs)})", file=sys.stderr)
        notes.append(f"- shard {opts.shard} of the job list (policies x seeds, seed-major): runs {start + 1}-{end} of "
                     f"{len(all_jobs)}; `--merge` the shard folders for the whole comparison")
    finished = {(r["policy"], int(r["seed"])) for r in rows}
    tasks = [_task(opts, name, seed, formula, rl, agents, group, ctx) for name, seed in mine
             if (name, seed) not in finished]
    failures = _execute(opts, tasks, len(mine), rows, ctx)
    wanted = set(mine)
    rows = [r for r in rows if (r["policy"], int(r["seed"])) in wanted]
    if ctx.is_main:
        stats = write_report(opts, rows, meta["env_info"], notes)
        log_ranking(opts, stats, group)
    else:
        stats = report.policy_stats(rows, opts.policies, REFERENCE)
    if failures:
        raise RunsFailed(f"{len(failures)} run(s) failed (their rows are missing; rerun to retry): "
                         + "; ".join(failures))
    return stats


def _task(opts: CompareOptions, name: str, seed: int, formula: List[str], rl: List[str],
          agents: Dict[str, Dict[int, str]], group: str, ctx: DistContext) -> EvalTask:
    agent_seed = opts.train_seeds[seed % len(opts.train_seeds)] if name in rl else None
    return EvalTask(policy=name, seed=seed, env_config=opts.env_config, eval_every=opts.eval_every,
                    policy_options=formula_options(name, opts) if name in formula else {},
                    agent_path=agents[name][agent_seed] if name in rl else None, agent_seed=agent_seed,
                    wandb_mode=opts.wandb if ctx.is_main else "disabled", wandb_project=opts.wandb_project,
                    wandb_group=group, wandb_dir=opts.out)


def _execute(opts: CompareOptions, tasks: List[EvalTask], total: int, rows: List[Dict[str, Any]],
             ctx: DistContext) -> List[str]:
    """Run `tasks`, appending a row to `rows` (and, on rank 0, to results.csv and runs/) as each
    one finishes, so an interruption loses nothing; returns the failures."""
    from tqdm.auto import tqdm

    out = Path(opts.out)
    failures: List[str] = []
    with tqdm(total=total, initial=total - len(tasks), desc="compare runs", unit="run",
              disable=not (opts.progress and ctx.is_main)) as bar:
        for task, done, exc in execute(run_task, tasks, opts.executor, opts.jobs):
            bar.update(1)
            if exc is not None:
                if ctx.enabled:  # a run failed on this rank; skipping it would desynchronise the ranks' collectives
                    raise exc
                failures.append(f"{task.policy} seed {task.seed}: {type(exc).__name__}: {exc}")
                bar.write(f"run failed: {failures[-1]}")
                continue
            rows.append(result_row(done))
            if ctx.is_main:
                atomic_write_text(run_file(out, task.policy, task.seed), json.dumps(done["result"]))
                write_rows(out / "results.csv", rows)
            bar.set_postfix_str(f"{task.policy} seed {task.seed}: test {100 * done['result']['test_acc']:.2f}%")
    return failures
