"""Tasks by name: what a distillation step computes from the models' outputs, and how a model is scored.

A task (`Task`, registered in `TASKS` under its name, chosen by `EnvConfig.task`) provides

- `supervised_loss(out, y)`: the loss a teacher is trained with (`mtkd_env.teachers`);
- `teacher_stats(t_outs, y, T)` and `measure(...)`: the step's KD terms and the **per-image**
  statistics that feed the observation and the rewards, as a `mtkd_env.tasks.batch.Batch` whose
  per-sample fields keep their meaning for every task (shapes (B, M) per statistic: teacher CE vs
  the ground truth per image, an accuracy-like score per image, the KL gap, the cosine gap, the
  teacher entropy; (B,) for the student);
- `sums(model, x, y, ...)`: (score sum, loss sum) over images (the probe loss of the rewards);
- `evaluate(model, eval_set, ...)`: (metric, mean loss) of a split (accuracy, mIoU, COCO mAP).

The env, the rewards, the actions, the baselines and the agents read only these, so they are the
same for every task. `classification` is the original behaviour, bit for bit (its functions are
`mtkd_env.tasks.batch`'s); `segmentation` (`mtkd_env.tasks.segmentation`) and `detection`
(`mtkd_env.tasks.detection`) are the dense tasks.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn
import torch.nn.functional as F

from ..models import ModelOutput
from ..models.accuracy import Forward, correct_and_ce, split_sums
from ..protocols import EvalSet
from ..runtime.errors import unknown_name
from .batch import Batch, TeacherStats, measure, teacher_stats

__all__ = ["Task", "TASKS", "register_task", "get_task", "task_names", "Classification"]

TASKS: Dict[str, "Task"] = {}
"""Task name -> the task (one instance: tasks hold no state)."""


def register_task(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        TASKS[name] = cls()
        return cls

    return deco


def _load() -> None:
    # Importing the dense task modules runs their @register_task decorators.
    from . import detection, segmentation, tv_detection  # noqa: F401


def task_names() -> List[str]:
    _load()
    return sorted(TASKS)


def get_task(name: str) -> "Task":
    """The task registered as `name`; an unknown name is a one-line `ConfigError`."""
    _load()
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


class Task:
    """What a task provides to the teachers and the engine (see the module docstring)."""

    name: str = ""
    metric: str = ""
    """The name of `evaluate`'s metric (e.g. "accuracy", "miou", "map")."""
    dense: bool = False
    """Whether a sample's target is more than one label (the teacher-output cache and the batched
    engine exist for classification only)."""

    def supervised_loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        """The 0-d training loss of a model's outputs `out` on targets y (a teacher's SGD step)."""
        raise NotImplementedError

    def correct(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        """The 0-d sum over the batch of a per-image score in [0, 1] (top-1 correctness, pixel
        accuracy, ...) of a model's training outputs (the teachers' training accuracy)."""
        raise NotImplementedError

    def teacher_stats(self, t_outs: List[ModelOutput], y: torch.Tensor, temperature: float) -> TeacherStats:
        """The teachers' side of a batch (no grad): M outputs -> `TeacherStats` with (B, M) statistics."""
        raise NotImplementedError

    def measure(self, x: torch.Tensor, y: torch.Tensor, index: Optional[torch.Tensor], t_outs: List[ModelOutput],
                teacher: TeacherStats, s_out: ModelOutput, projected: Optional[List[torch.Tensor]],
                temperature: float, keep_maps: bool, with_cos: bool = True) -> Batch:
        """The `Batch` of one student's outputs: per-image KD terms (B, M) with grad, statistics."""
        raise NotImplementedError

    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             forward: Optional[Forward] = None) -> torch.Tensor:
        """(per-image score sum, per-image loss sum) over (x, y) in eval mode, a (2,) device tensor."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, eval_set: EvalSet, batch_size: int,
                 forward: Optional[Forward] = None) -> torch.Tensor:
        """(metric, mean per-image loss) of `model` over an eval set, in eval mode: a (2,) tensor."""
        raise NotImplementedError

    def shift_labels(self, y: torch.Tensor, num_classes: int, flip: torch.Tensor) -> torch.Tensor:
        """Targets y (N, ...) with every label of the images `flip` (N,) bool moved to the next class
        (the "=noisy" teachers' systematic error)."""
        raise NotImplementedError

    def check_targets(self, y: torch.Tensor, num_classes: int, where: str, image_shape: Optional[tuple] = None) -> None:
        """Refuse targets the task cannot read with a one-line `ConfigError` (`where` names the split;
        `image_shape` (C, H, W) bounds the boxes of detection)."""


@register_task("classification")
class Classification(Task):
    """One label per image: CE, T^2 KL of the logits, top-1 accuracy (the original engine)."""

    metric = "accuracy"

    def supervised_loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.logits, y)

    def correct(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        return (out.logits.detach().argmax(1) == y).sum()

    def teacher_stats(self, t_outs, y, temperature):
        return teacher_stats(t_outs, y, temperature)

    def measure(self, x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos=True):
        return measure(x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps, with_cos)

    def sums(self, model, x, y, batch_size, forward=None):
        return correct_and_ce(model, x, y, batch_size, forward)

    def evaluate(self, model, eval_set, batch_size, forward=None):
        return split_sums(model, eval_set, batch_size, forward) / len(eval_set)

    def check_targets(self, y: torch.Tensor, num_classes: int, where: str, image_shape: Optional[tuple] = None) -> None:
        from ..runtime.errors import ConfigError

        if y.dim() != 1:
            raise ConfigError(f"{where}: classification needs one label per image (N,), got targets of shape "
                              f"{tuple(y.shape)}; set task to 'segmentation' or 'detection' for dense targets")


def image_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (..., B, *S) over the valid positions `valid` (B, *S) of each image: (..., B).
    An image without a valid position gives 0."""
    v = valid.to(values.dtype)
    dims = tuple(range(-valid.dim() + 1, 0))
    return (values * v).sum(dims) / v.sum(dims).clamp_min(1.0)

