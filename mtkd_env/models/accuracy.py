"""Top-1 accuracy and cross-entropy: the one evaluation loop of teachers
(`mtkd_env.teachers.evaluate_split`) and of the students (`DistillationEngine.split_metrics`,
`probe_loss`). Sums stay on the device (no host sync)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
import torch.nn.functional as F

from ..protocols import EvalSet

__all__ = ["correct_and_ce", "correct_count", "split_sums", "split_correct"]

Forward = Callable[[torch.Tensor], object]
"""`forward(x)` -> a `ModelOutput` (e.g. the model under autocast, in channels_last)."""


@torch.no_grad()
def correct_and_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   forward: Optional[Forward] = None) -> torch.Tensor:
    """(correct top-1 predictions, summed cross-entropy) of `model` on x (N, ...), y (N,), in eval
    mode (the previous mode is restored), as a (2,) float tensor on x's device. `forward` replaces
    `model` for the forward."""
    forward = forward or model
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=x.device)
    for i in range(0, len(x), batch_size):
        logits = forward(x[i:i + batch_size]).logits.float()
        sums[0] += (logits.argmax(1) == y[i:i + batch_size]).sum()
        sums[1] += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum")
    model.train(was_training)
    return sums


def correct_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  forward: Optional[Forward] = None) -> torch.Tensor:
    """Correct top-1 predictions (`correct_and_ce`'s first entry), a 0-d float tensor."""
    return correct_and_ce(model, x, y, batch_size, forward)[0]


def split_sums(model: nn.Module, eval_set: EvalSet, batch_size: int, forward: Optional[Forward] = None) -> torch.Tensor:
    """`correct_and_ce` over an eval set held in device memory or streamed in batches, (2,)."""
    if eval_set.x is not None:
        return correct_and_ce(model, eval_set.x, eval_set.y, batch_size, forward)
    sums: Optional[torch.Tensor] = None
    for x, y in eval_set.batches(batch_size):
        part = correct_and_ce(model, x, y, batch_size, forward)
        sums = part if sums is None else sums + part
    return torch.zeros(2) if sums is None else sums


def split_correct(model: nn.Module, eval_set: EvalSet, batch_size: int, forward: Optional[Forward] = None) -> torch.Tensor:
    """Correct top-1 predictions over an eval set, a 0-d float tensor."""
    return split_sums(model, eval_set, batch_size, forward)[0]
