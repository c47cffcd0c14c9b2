"""Top-1 accuracy: the one evaluation loop of teachers (`mtkd_env.teachers.evaluate_split`) and of
the student (`DistillationEngine.split_accuracy`). Counts stay on the device (no host sync)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .protocols import EvalSet

__all__ = ["correct_count", "split_correct"]

Forward = Callable[[torch.Tensor], object]
"""`forward(x)` -> a `ModelOutput` (e.g. the model under autocast, in channels_last)."""


@torch.no_grad()
def correct_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  forward: Optional[Forward] = None) -> torch.Tensor:
    """Correct top-1 predictions of `model` on x (N, ...), y (N,), in eval mode (the previous mode
    is restored), as a 0-d float tensor on x's device. `forward` replaces `model` for the forward."""
    forward = forward or model
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        correct += (forward(x[i:i + batch_size]).logits.argmax(1) == y[i:i + batch_size]).sum()
    model.train(was_training)
    return correct


def split_correct(model: nn.Module, eval_set: EvalSet, batch_size: int, forward: Optional[Forward] = None) -> torch.Tensor:
    """`correct_count` over an eval set held in device memory or streamed in batches."""
    if eval_set.x is not None:
        return correct_count(model, eval_set.x, eval_set.y, batch_size, forward)
    correct: Optional[torch.Tensor] = None
    for x, y in eval_set.batches(batch_size):
        count = correct_count(model, x, y, batch_size, forward)
        correct = count if correct is None else correct + count
    return torch.zeros(()) if correct is None else correct
