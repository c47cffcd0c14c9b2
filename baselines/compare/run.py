"""`run_compare`: every missing (policy, seed) run of a comparison, then its summary."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List

from mtkd_env.config import ConfigError

from .. import report
from ..policies import make_policy
from ..weights import NORMALIZATIONS
from .jobs import job_list, parse_shard, shard_bounds, shard_jobs
from .options import REFERENCE, WANDB_MODES, CompareError, CompareOptions, RunsFailed
from .outdir import atomic_write, env_info, open_out, read_rows, record_env_and_agents, result_row, run_file, write_rows
from .pool import execute
from .resolve import formula_options, resolve_policies
from .rl_agents import prepare_agents
from .summary import write_report
from .torchrun import join_torchrun, rank0
from .worker import build_env

__all__ = ["run_compare"]


def run_compare(opts: CompareOptions) -> List[report.PolicyStats]:
    """Run every missing (policy, seed) evaluation of this shard, then write the summary and plots.

    Under torchrun every rank runs the same episodes; only rank 0 writes files, prints and logs to
    W&B, and the other ranks return the same statistics without writing anything. There a failing
    run stops the comparison (finished rows are kept) instead of being skipped on one rank only.
    """
    from .worker import EvalTask

    validate(opts)
    formula, rl = resolve_policies(opts.policies)
    for name in formula:  # e.g. per-sample policies need steps_per_action = 1: fail before any run
        overrides = make_policy(name, **formula_options(name, opts)).env_overrides
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
    ctx = join_torchrun(opts, rl)
    say = print if ctx.is_main else (lambda *a, **k: None)
    meta = rank0(ctx, lambda: open_out(opts, shard))
    out = Path(opts.out)
    group = opts.wandb_group or meta["wandb_group"]
    base_env = rank0(ctx, lambda: build_env(opts.env_config), then_others=True)  # trains missing teachers once
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
    rows = rank0(ctx, lambda: read_rows(rows_path))  # rank 0's view, so all ranks run the same tasks
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
            policy_options=formula_options(name, opts) if name in formula else {},
            agent_path=agents[name][agent_seed] if name in rl else None, agent_seed=agent_seed,
            wandb_mode=opts.wandb if ctx.is_main else "disabled", wandb_project=opts.wandb_project,
            wandb_group=group, wandb_dir=str(out)))

    from tqdm.auto import tqdm

    failures = []
    with tqdm(total=len(mine), initial=len(mine) - len(tasks), desc="compare runs", unit="run",
              disable=not (opts.progress and ctx.is_main)) as bar:
        for task, done, exc in execute(tasks, opts.jobs):
            bar.update(1)
            if exc is not None:
                if ctx.enabled:  # a run failed on this rank; skipping it would desynchronise the ranks' collectives
                    raise exc
                failures.append(f"{task.policy} seed {task.seed}: {type(exc).__name__}: {exc}")
                bar.write(f"run failed: {failures[-1]}")
                continue
            rows.append(result_row(done))
            if ctx.is_main:
                atomic_write(run_file(out, task.policy, task.seed), json.dumps(done["result"]))
                write_rows(rows_path, rows)      # after each run: an interruption loses nothing
            bar.set_postfix_str(f"{task.policy} seed {task.seed}: test {100 * done['result']['test_acc']:.2f}%")

    wanted = set(mine)
    rows = [r for r in rows if (r["policy"], int(r["seed"])) in wanted]
    notes = []
    if shard is not None:
        notes.append(f"- shard {opts.shard} of the job list (policies x seeds, seed-major): runs {start + 1}-{end} of "
                     f"{len(all_jobs)}; `--merge` the shard folders for the whole comparison")
    if ctx.is_main:
        stats = write_report(opts, rows, meta["env_info"], notes)
    else:
        stats = report.policy_stats(rows, opts.policies, REFERENCE)
    if failures:
        raise RunsFailed(f"{len(failures)} run(s) failed (their rows are missing; rerun to retry): "
                           + "; ".join(failures))
    return stats


def validate(opts: CompareOptions) -> None:
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
