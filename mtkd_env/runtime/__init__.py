"""The runtime layer every entry point stands on: `agents` and `baselines` build on it, and so do
the env's own CLIs (`python -m mtkd_env`, `python -m mtkd_env.teachers`).

- `errors`: `UserError` (bad input; `ConfigError`, `CheckpointError`, ...), "did you mean" and `short_repr`
- `cli`: the one CLI wrapper (`run_cli`: one line on stderr, exit 2) and argument parser
- `options`: settings declared once (strict pydantic dataclasses) -> checks, one-line errors, CLI flags, --help
  and the config reference rows
- `mappings`: YAML/JSON values read safely (YAML 1.2 numbers, KEY=VALUE pairs, a size guard)
- `files`: atomic writes, weights-only torch loading, output paths checked before any work
- `resources`: device names, and the default thread count that cannot oversubscribe
- `collective`: torchrun agreement helpers (one rank's outcome becomes every rank's)
- `tracking`: W&B start-up (modes, offline fallback) and the metadata every run records
- `distributed`: the env under torchrun (process group, device per rank)
- `executors`: where a command's independent jobs run, by name: local worker processes or a Ray cluster

Nothing here imports the domain (`mtkd_env.layering`: the ground floor); the one episode runner
is `mtkd_env.episodes`, on top.

Importing this package imports nothing else (`import mtkd_env` stays free of torch).
"""
