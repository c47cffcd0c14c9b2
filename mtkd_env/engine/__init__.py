"""The distillation engine: one multi-teacher KD iteration, for one student or K stacked ones.

- `core`: `DistillationEngine`, the one place an iteration happens (prepare, apply, evaluate);
- `batch`: `Batch`, what an iteration computes before the update, and the weighted KD loss;
- `observe`: the observation tensors built from a `Batch`;
- `teacher_cache`: the teachers' outputs and statistics over the training split, computed once;
- `trainee`, `virtual`: the trained student and its differentiable optimiser copy;
- `student_stack`, `batched`: K students in one process (`BatchedEngine`, for the vector env).
"""

from __future__ import annotations

from ..tasks.batch import Batch
from .batched import BatchedEngine
from .core import DistillationEngine

__all__ = ["DistillationEngine", "BatchedEngine", "Batch"]
