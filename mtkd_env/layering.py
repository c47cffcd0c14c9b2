"""The allowed imports of the project, written once (checked by `tests/mtkd_env/test_layering.py`).

Inside `mtkd_env`, every module belongs to one *place*: the first name after `mtkd_env.` (a package
such as `engine`, or a module such as `env`); `mtkd_env/__init__.py` is the place `__init__`. The
places sit on floors, from the ground up. A module may import its own place and any place on a
lower floor; an import of a place on the same floor (sideways) or on a higher one (upward) is an
error. The rule covers every import: at module level and inside functions, relative or absolute.

Between the top-level packages the order is `PACKAGES`: each may import itself and the ones
before it (`agents` uses `mtkd_env`; `benchmarks` may use all three), never one after it.
"""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["FLOORS", "PLACES", "PACKAGES"]

FLOORS: Tuple[Tuple[str, ...], ...] = (
    # ground: nothing from the domain (errors, options, files, resources, the CLI wrapper,
    # torch.distributed and the collective helpers, W&B), the typing protocols, statistics, this table
    ("runtime", "protocols", "stats", "layering"),
    # the datasets; the MDP's own vocabulary (actions, observation spaces, rewards, measurements);
    # the scenario recipes and instance sets
    ("data", "mdp", "scenarios"),
    # the env's settings; the model zoo and its registry
    ("config", "models"),
    # the tasks by name (classification, segmentation, detection): the batch's KD terms, the
    # per-image statistics and the evaluation metric
    ("tasks",),
    # the teacher pool: specs, training, checkpoints
    ("teachers",),
    # one distillation iteration, for one student or K stacked ones
    ("engine",),
    # the Gymnasium face: the single env, then the vector env built on it
    ("env",),
    ("vector_env",),
    # the one episode runner
    ("episodes",),
    # the package face: `import mtkd_env` (gym ids, `EnvConfig`) and `python -m mtkd_env`
    ("__init__", "__main__"),
)
"""Floors from the ground up; each holds the places (under `mtkd_env.`) that sit on it."""

PLACES: Dict[str, str] = {
    "runtime": "errors, options (the settings layer), files, resources, the CLI wrapper, torch.distributed and "
               "the collective helpers, W&B tracking, the job executors (local processes, Ray)",
    "protocols": "the typing protocols: data splits, loaders, evaluation sets, policies",
    "stats": "paired statistics and the minimum detectable effect",
    "layering": "this table",
    "data": "the datasets by name: in-memory tensor splits, streamed image folders, the loaders",
    "mdp": "the MDP's vocabulary: actions (`ActionMap`, `ACTION_TRANSFORMS`), observation spaces, rewards, "
           "measurements, the shared step parts",
    "scenarios": "the scenario suite: named teacher-pool recipes with known answers, instance sets",
    "config": "`EnvConfig` and its flags (`add_env_flags`, `env_config_from`)",
    "models": "the model zoo, its registry, accuracy, projectors",
    "tasks": "the tasks by name (`TASKS`: classification, segmentation, detection): supervised loss, KD terms, "
             "per-image statistics (`Batch`, `TeacherStats`), evaluation metric",
    "teachers": "the teacher pool: specs, training, checkpoints; `python -m mtkd_env.teachers`",
    "engine": "one distillation iteration, for one student (`DistillationEngine`) or K stacked ones",
    "env": "`MultiTeacherKDEnv`, the single Gymnasium env",
    "vector_env": "`MultiTeacherKDVectorEnv`, the batched vector env built on it",
    "episodes": "the episode runner (`run_episode`, `run_episodes`)",
    "__init__": "`import mtkd_env`: the gym ids, `EnvConfig`",
    "__main__": "`python -m mtkd_env`",
}
"""What each place holds, in a few words (rendered in the docs' floors table)."""

PACKAGES: Tuple[str, ...] = ("mtkd_env", "agents", "baselines", "benchmarks")
"""The top-level packages in import order: each may import only itself and those before it."""
