"""The parts of an env step that the single env and the batched vector env share.

`MultiTeacherKDEnv` runs a step in phases (`begin_reset` / `reset_measurements` / `finish_reset`,
`checked_weights` / `after_update` / `step_parts` / `finish_step`); `Pending` carries a step
between its device work and its host values, `run_iterations` is the update of a step (for any
engine with `apply`/`advance`/`done`) and `to_host` the one device->host copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["Pending", "run_iterations", "to_host"]


@dataclass
class Pending:
    """A step (or reset) between its device work and its host values: the measurement plan, its
    evaluations (device), and for a step the engine's outputs and the weights used."""

    plan: list
    evals: torch.Tensor
    terminated: bool = False
    out: Optional[dict] = None
    loss: Optional[torch.Tensor] = None
    wl: Optional[np.ndarray] = None
    wf: Optional[np.ndarray] = None
    credits: Dict[str, torch.Tensor] = field(default_factory=dict)
    """Target -> (B, M) device tensor: the credits of the step's batch (`DistillationEngine.kd_credit`)."""


def run_iterations(engine, w_logit: torch.Tensor, w_feat: torch.Tensor, steps: int):
    """`steps` distillation iterations with the same weights (`steps_per_action`), stopping when
    the episode is done: (the last `apply` output, the mean loss over the iterations). Works for
    `DistillationEngine` and the batched engine alike (tensors then carry a leading K)."""
    loss_sum = None
    for i in range(steps):
        if i:
            engine.advance()
        out = engine.apply(w_logit, w_feat)
        loss_sum = out["loss"] if loss_sum is None else loss_sum + out["loss"]
        if engine.done:
            break
    return out, loss_sum / (i + 1)


def to_host(parts: List[torch.Tensor]) -> List[np.ndarray]:
    """One device->host copy of several device tensors: float64 arrays of the same shapes."""
    if not parts:
        return []
    flat = torch.cat([p.reshape(-1).float() for p in parts]).cpu().numpy().astype(np.float64)
    out, i = [], 0
    for p in parts:
        out.append(flat[i:i + p.numel()].reshape(p.shape))
        i += p.numel()
    return out
