"""Learned teacher weighting: SB3 algorithms and the MTKD-RL agents on `MultiTeacherKD-v0`.

`python -m agents.train --algo ppo` trains one; `python -m agents.evaluate --model DIR` scores it.
The programmatic API (`ALGOS`, `train`, `resume`, `load_policy`) lives in `agents.api`.
"""

from __future__ import annotations

__all__ = ["ALGOS", "train", "resume", "load_policy"]


def __getattr__(name: str):
    # Lazy: `import agents` stays cheap; torch and SB3 load with the first use of the API.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
