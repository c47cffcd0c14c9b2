"""`TeacherCache`: the frozen teachers' outputs and statistics for every training row, computed once.

The teachers are frozen and run in eval mode, so without augmentation their outputs on a
training image never change: the cache runs them once over the training split and every batch
then gathers its rows instead of running M teacher forwards. The teacher side of the batch
statistics (`TeacherStats`: tempered log-probabilities and probabilities, entropy, CE,
correctness) depends only on those outputs and the labels, so it is cached too.
With `EnvConfig.teacher_views` the rows are the loader's N*V fixed augmented views
(`DeviceLoader.rows`) instead of the N images.

Layout: one (N, F) float32 tensor, each row
`[logits (M*C) | log_pt (M*C) | pt (M*C) | entropy (M) | ce (M) | correct (M) | embeddings | feature maps]`
(embeddings D_0 .. D_{M-1}, then feature maps C_m*H_m*W_m, teacher after teacher), so that a batch
is one `index_select` and every quantity is a view of it.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..models import ModelOutput
from ..tasks.batch import TeacherStats, teacher_stats

__all__ = ["TeacherCache", "use_cache", "AUTO_CACHE_BYTES"]

AUTO_CACHE_BYTES = 2 ** 30
"""The largest teacher-output cache that `cache_teacher_outputs=None` ("auto") builds: 1 GiB of
device memory (the embedded digits need 24 MB); above it the teachers run on every batch."""


def use_cache(setting: Optional[bool], augment: bool, in_memory: bool, nbytes: int) -> bool:
    """Whether an engine caches its teachers' outputs (`EnvConfig.cache_teacher_outputs` =
    `setting`): always when true (the engine refuses a dataset streamed from disk and the config
    refuses augmentation), never when false; with None ("auto") where it is exact — no
    augmentation, an in-memory dataset — and the cache's `nbytes` fit in `AUTO_CACHE_BYTES`."""
    if setting is not None:
        return setting
    return not augment and in_memory and nbytes <= AUTO_CACHE_BYTES


class TeacherCache:
    """Cached teacher outputs and statistics of N training rows (see the module docstring)."""

    def __init__(self, num_classes: int, feature_shapes: Sequence[Tuple[int, ...]], embedding_dims: Sequence[int],
                 rows: torch.Tensor) -> None:
        self.num_classes, self.num_teachers = num_classes, len(feature_shapes)
        self.feature_shapes = [tuple(s) for s in feature_shapes]
        self.embedding_dims = [int(d) for d in embedding_dims]
        self.rows = rows
        """(N, F) float32: the layout of the module docstring."""

    @staticmethod
    def row_width(num_classes: int, feature_shapes: Sequence[Tuple[int, ...]], embedding_dims: Sequence[int]) -> int:
        """F: floats per cached row."""
        m = len(feature_shapes)
        return 3 * m * num_classes + 3 * m + sum(embedding_dims) + sum(math.prod(s) for s in feature_shapes)

    @classmethod
    @torch.no_grad()
    def build(cls, forwards: Sequence[Callable[[torch.Tensor], ModelOutput]], x: torch.Tensor, y: torch.Tensor,
              num_classes: int, feature_shapes: Sequence[Tuple[int, ...]], embedding_dims: Sequence[int],
              temperature: float, chunk: int, autocast: Callable[[], AbstractContextManager],
              fmt: Callable[[torch.Tensor], torch.Tensor]) -> "TeacherCache":
        """Run the teachers (`forwards`, in eval mode) over x (N, ...) with labels y (N,) in chunks of
        `chunk` rows, under `autocast()`, inputs through `fmt` (memory format)."""
        width = cls.row_width(num_classes, feature_shapes, embedding_dims)
        rows = torch.empty(len(x), width, device=x.device)
        for i in range(0, len(x), chunk):
            xb, yb = fmt(x[i:i + chunk]), y[i:i + chunk]
            with autocast():
                outs = [f(xb) for f in forwards]
            stats = teacher_stats(outs, yb, temperature)
            b = len(yb)
            rows[i:i + b] = torch.cat(
                [stats.logits.transpose(0, 1).reshape(b, -1), stats.log_pt.transpose(0, 1).reshape(b, -1),
                 stats.pt.transpose(0, 1).reshape(b, -1), stats.entropy, stats.ce, stats.correct]
                + [o.embedding.float() for o in outs] + [o.feature_map.float().flatten(1) for o in outs], dim=1)
        return cls(num_classes, feature_shapes, embedding_dims, rows)

    def lookup(self, index: torch.Tensor) -> Tuple[List[ModelOutput], TeacherStats]:
        """The teachers' outputs (M `ModelOutput`s) and statistics of the rows `index` (B,): one gather."""
        rows = self.rows.index_select(0, index)
        b, m, c = len(index), self.num_teachers, self.num_classes

        def per_teacher(start: int) -> torch.Tensor:  # (B, M*C) block -> (M, B, C) view
            return rows[:, start:start + m * c].view(b, m, c).transpose(0, 1)

        col = 3 * m * c
        entropy, ce, correct = (rows[:, col + k * m:col + (k + 1) * m] for k in range(3))
        col += 3 * m
        embeddings = []
        for dim in self.embedding_dims:
            embeddings.append(rows[:, col:col + dim])
            col += dim
        outs = []
        for emb, shape, logits in zip(embeddings, self.feature_shapes, per_teacher(0).unbind(0)):
            size = math.prod(shape)
            outs.append(ModelOutput(logits, rows[:, col:col + size].view(b, *shape), emb))
            col += size
        return outs, TeacherStats(per_teacher(0), per_teacher(m * c), per_teacher(2 * m * c), entropy, ce, correct)
