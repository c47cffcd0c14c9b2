"""`Trainee`: one student being distilled — network, projectors, optimiser and LR schedule.

The engine trains one trainee (the agent's student) and, when a reward needs it, a second one in
lockstep: the *twin*, a reference student trained with equal weights (AVER) on the same batches
from the same initialisation (see `DistillationEngine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from ..models.projectors import ProjectorBank

__all__ = ["Trainee"]


@dataclass
class Trainee:
    """A student with everything its training updates. `forward` / `projector_forward` are the
    hot-path callables (channels_last, DDP, `torch.compile` applied); evaluations use the bare
    `student` module."""

    student: nn.Module
    projectors: Optional[ProjectorBank]
    optimizer: torch.optim.Optimizer
    scheduler: Any                       # torch.optim.lr_scheduler.LambdaLR
    forward: Callable
    projector_forward: Optional[Callable]

    def modules(self) -> List[nn.Module]:
        return [m for m in (self.student, self.projectors) if m is not None]

    def batch_norms(self) -> List[nn.Module]:
        """BatchNorm layers that track running statistics."""
        return [m for mod in self.modules() for m in mod.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Optimiser step, then LR schedule step (after `backward`)."""
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(),
                "projectors": None if self.projectors is None else self.projectors.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if self.projectors is not None:
            self.projectors.load_state_dict(state["projectors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
