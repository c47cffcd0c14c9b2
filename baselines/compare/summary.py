"""summary.md, curves.png and weights.png of a comparison's rows."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Sequence

from mtkd_env.runtime.files import atomic_write_text

from .. import report
from ..policies import POLICIES
from .options import REFERENCE, CompareOptions
from .outdir import run_file

__all__ = ["write_report", "log_ranking"]


def write_report(opts: CompareOptions, rows: List[Dict[str, Any]], info: Dict[str, Any],
                  notes: Sequence[str] = ()) -> List[report.PolicyStats]:
    """summary.md, curves.png and weights.png of `rows` (those of `opts.policies` x `opts.seeds`)
    into `opts.out`; `info` is the env's `env_info` record, `notes` extra summary lines."""
    out = Path(opts.out)
    wanted = [r for r in rows if r["policy"] in opts.policies and int(r["seed"]) in opts.seeds]
    stats = report.policy_stats(wanted, opts.policies, REFERENCE)
    if not stats:
        return stats
    curves: Dict[str, List[dict]] = {}
    for name in opts.policies:
        for seed in opts.seeds:
            path = run_file(out, name, seed)
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
    atomic_write_text(out / "summary.md", text)
    print(table)
    print(report.verdict(stats, REFERENCE))
    return stats


def log_ranking(opts: CompareOptions, stats: List[report.PolicyStats], group: str) -> None:
    """The ranking (the rows of summary.md's table, best first) as a `wandb.Table` "ranking" in a W&B
    run of its own (job type "compare", in the comparison's group); nothing for `--wandb disabled`."""
    if opts.wandb == "disabled" or not stats:
        return
    from mtkd_env.runtime.tracking import start_wandb

    run = start_wandb(opts.wandb, project=opts.wandb_project, group=group, name="ranking", job_type="compare",
                      config={"policies": list(opts.policies), "seeds": list(opts.seeds), "reference": REFERENCE,
                              "env": opts.env_config.to_dict(), "command": opts.command},
                      run_dir=Path(opts.out), tags=["ranking"])
    import wandb

    columns = ["rank"] + [f.name for f in dataclasses.fields(report.PolicyStats)]

    def cell(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    rows = [[rank] + [cell(getattr(s, c)) for c in columns[1:]] for rank, s in enumerate(stats, 1)]
    run.log({"ranking": wandb.Table(columns=columns, data=rows)})
    run.summary.update({"best_policy": stats[0].policy})
    run.finish()
