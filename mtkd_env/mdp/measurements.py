"""Which evaluations of the student (and its twin) an env step takes, and when.

The rewards in use say what they need (`Reward.needs`); `MeasurementPlan` turns that into the
list of zero-argument device evaluations of a reset or a step, so that the env gathers them in
its one device->host copy. At the episode's end the final validation and test accuracy (and the
twin's, when there is one) are always measured: they go into `info`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .rewards import MEASUREMENTS, Reward

__all__ = ["MeasurementPlan"]

Evaluation = Tuple[Tuple[str, ...], Callable[[], torch.Tensor]]
"""(names, fn): fn() returns a 1-d device tensor with one value per name."""


class MeasurementPlan:
    def __init__(self, engine, rewards: Sequence[Reward], reward_interval: int) -> None:
        self.engine = engine
        self.needs = frozenset().union(*(r.needs for r in rewards)) if rewards else frozenset()
        self.probe = [n for n in ("probe_loss", "twin_probe_loss") if n in self.needs]
        self.val = sorted(n for n in self.needs if MEASUREMENTS[n] == "val")
        self.val_every_interval = any(r.needs_val and r.val_schedule == "interval" for r in rewards)
        self.interval = reward_interval
        self.twin = engine.has_twin

    # --- building blocks -------------------------------------------------------------------
    def _probe(self) -> List[Evaluation]:
        e = self.engine
        return [((n,), (lambda twin=n.startswith("twin_"): e.probe_loss(twin).reshape(1))) for n in self.probe]

    def _split(self, split: str, twin: bool) -> Evaluation:
        e, prefix = self.engine, "twin_" if twin else ""
        eval_set = e.val_set if split == "val" else e.test_set
        return (f"{prefix}{split}_acc", f"{prefix}{split}_loss"), lambda: e.split_metrics(eval_set, twin)

    def _val(self) -> List[Evaluation]:
        out = []
        if any(not n.startswith("twin_") for n in self.val):
            out.append(self._split("val", False))
        if any(n.startswith("twin_") for n in self.val):
            out.append(self._split("val", True))
        return out

    # --- plans -----------------------------------------------------------------------------
    def at_reset(self) -> List[Evaluation]:
        return self._probe() + self._val()

    def is_val_step(self, t: int, terminated: bool) -> bool:
        return bool(self.val) and (terminated or (self.val_every_interval and t % self.interval == 0))

    def at_step(self, t: int, terminated: bool) -> List[Evaluation]:
        plan = self._probe()
        if terminated:
            plan += self.final()
        elif self.is_val_step(t, terminated):
            plan += self._val()
        return plan

    def final(self) -> List[Evaluation]:
        """The end-of-episode measurements: val and test of the student (and of the twin)."""
        plan = [self._split("val", False), self._split("test", False)]
        if self.twin:
            plan += [self._split("val", True), self._split("test", True)]
        return plan

    @staticmethod
    def names(plan: List[Evaluation]) -> List[str]:
        return [n for names, _ in plan for n in names]

    @staticmethod
    def kept(plan: List[Evaluation], values: Sequence[float], needs) -> Dict[str, float]:
        """name -> value for the measurements in `needs` (reward inputs)."""
        return {n: v for n, v in zip(MeasurementPlan.names(plan), values) if n in needs}
