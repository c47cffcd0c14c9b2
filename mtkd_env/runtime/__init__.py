"""The runtime layer every entry point stands on: `agents` and `baselines` build on it, and so do
the env's own CLIs (`python -m mtkd_env`, `python -m mtkd_env.teachers`).

- `collective`: torchrun agreement helpers (one rank's outcome becomes every rank's)
- `tracking`: W&B start-up (modes, offline fallback) and the metadata every run records

Importing this package imports nothing else (`import mtkd_env` stays free of torch).
"""
