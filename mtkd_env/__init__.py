"""Multi-teacher knowledge distillation as a Gymnasium environment (`MultiTeacherKD-v0`).

Importing this package registers the env id with string entry points; torch and the teachers
are only loaded when an env is made. `gym.make_vec(ENV_ID, num_envs=K)` builds the batched
`MultiTeacherKDVectorEnv` (K students trained in one process); `vectorization_mode="sync"` or
`"async"` gives Gymnasium's vector envs of K single envs.
"""

from __future__ import annotations

import gymnasium as gym

from .config import ConfigError, EnvConfig

__all__ = ["EnvConfig", "ConfigError", "MultiTeacherKDEnv", "MultiTeacherKDVectorEnv", "ENV_ID"]
__version__ = "0.1.0"

ENV_ID = "MultiTeacherKD-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="mtkd_env.env:MultiTeacherKDEnv",
                 vector_entry_point="mtkd_env.vector_env:MultiTeacherKDVectorEnv")


def __getattr__(name: str):
    if name == "MultiTeacherKDEnv":
        from .env import MultiTeacherKDEnv

        return MultiTeacherKDEnv
    if name == "MultiTeacherKDVectorEnv":
        from .vector_env import MultiTeacherKDVectorEnv

        return MultiTeacherKDVectorEnv
    raise AttributeError(f"module 'mtkd_env' has no attribute {name!r}")
