"""`python -m baselines.compare`: rank teacher-weighting policies on the same students and seeds.

    python -m baselines.compare --policies aver,ca-mkd,ebkd,aekd,best,random,no-kd,ppo,mtkd-rl \\
        --seeds 0 1 2 3 4 5 6 7 8 9 [--env-config FILE] [--env K=V ...] [--agent-dir DIR] [--wandb MODE] \\
        [--out DIR] [--jobs N | --backend ray --address ADDR [--ray-num-gpus F]] [--shard I/N]
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
contiguous, near-equal slices of it into its own `--out`, and `--merge` (`baselines.compare.merge`) checks
the shard folders agree and writes the four artefacts of one unsharded run. Shards never train RL
agents: they load them from a shared `--agent-dir` (made once with `--train-only`), so every shard
evaluates the very same agent files.

On a Ray cluster, `--backend ray` sends one Ray task per (policy, seed) run
(`mtkd_env.runtime.executors`); the results come back to this process, which writes every file.

Under `torchrun` (RANK/WORLD_SIZE set) every rank runs the same episodes, each as one distillation
spread over all ranks (`mtkd_env.runtime.distributed`); only rank 0 prints, writes files and logs to W&B.
"""

from __future__ import annotations

from .cli import main, options_from_args
from .jobs import job_list, parse_shard, shard_jobs
from .options import CompareError, CompareOptions, RunsFailed
from .resolve import resolve_policies
from .run import run_compare

__all__ = ["CompareOptions", "CompareError", "RunsFailed", "run_compare", "resolve_policies", "main", "options_from_args",
           "job_list", "parse_shard", "shard_jobs"]
