"""Multi-teacher knowledge distillation as a Gymnasium environment (`MultiTeacherKD-v0`).

Importing this package registers the env id with a string entry point; torch and the teachers
are only loaded when an env is made.
"""

from __future__ import annotations

import gymnasium as gym

from .config import ConfigError, EnvConfig

__all__ = ["EnvConfig", "ConfigError", "MultiTeacherKDEnv", "ENV_ID"]
__version__ = "0.1.0"

ENV_ID = "MultiTeacherKD-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="mtkd_env.env:MultiTeacherKDEnv")


def __getattr__(name: str):
    if name == "MultiTeacherKDEnv":
        from .env import MultiTeacherKDEnv

        return MultiTeacherKDEnv
    raise AttributeError(f"module 'mtkd_env' has no attribute {name!r}")
