"""`StudentStack`: K students of one architecture (with their projectors) trained as one.

Every parameter and buffer is one tensor with a leading K dimension. A forward runs the K
students as one batched forward and one backward, in one of three modes: "grouped" (the students
as one grouped network, `mtkd_env.models.grouped`, for the architectures it covers: the fastest on
the CPU), "vmap" (`torch.func.vmap` of `torch.func.functional_call` over the stack: any
architecture; the CUDA default) or "rows" (the same function row by row). BatchNorm running
statistics stay per student: the stacked buffers are passed as batched inputs, so the in-place
updates of train-mode BatchNorm land in each student's own row. The optimiser is SGD with torch's
update rule (weight decay, momentum, Nesterov; elementwise, so one update of the stack is K
independent updates) with a learning rate per student, since students reset at different times.

Under `vmap` the batch computation is the single engine's own: `mtkd_env.tasks.batch.measure`, and the
engine's caller applies `mtkd_env.tasks.batch.loss_terms` the same way; the grouped mode takes the
feature terms (`feature_terms`) on all rows at once and vmaps the rest of `measure`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.utils import _pytree

from ..models import ModelOutput, grouped
from ..tasks.batch import Batch, TeacherStats, feature_terms, measure
from .fused_features import fused_feature_terms

__all__ = ["StudentStack", "MODES", "index_rows", "row_of"]

MODES = ("grouped", "vmap", "rows")
"""How the K students' forward runs (see the module docstring)."""


class _Pair(nn.Module):
    """Student and projectors as one module, so that one `functional_call` runs both (names
    "student.<name>" and "projectors.<name>", as `VirtualSteps.trainable_parameters`)."""

    def __init__(self, student: nn.Module, projectors: Optional[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.projectors = projectors

    def forward(self, x: torch.Tensor, project: bool = True):
        s_out = self.student(x)
        if not project or self.projectors is None:
            return s_out, None
        return s_out, self.projectors(s_out.feature_map)


class StudentStack:
    """K students (and projectors) as stacked tensors: `params` (leaf tensors that require grad),
    `buffers` (BatchNorm statistics) and SGD momentum, all (K, ...).

    `student` / `projectors` give the architecture (their own tensors are never trained: rows are
    loaded with `load_row`). `sgd`: (momentum, weight_decay, nesterov). `mode`: one of `MODES`
    ("grouped" needs `mtkd_env.models.grouped.supports(student, projectors)`); every mode makes one
    backward and one update for all rows."""

    def __init__(self, student: nn.Module, projectors: Optional[nn.Module], num: int, sgd: Sequence,
                 autocast: Callable, mode: str = "vmap") -> None:
        if mode not in MODES or (mode == "grouped" and not grouped.supports(student, projectors)):
            raise ValueError(f"student stack mode: expected one of {MODES} ('grouped' only for "
                             f"{type(student).__name__} if grouped.supports it), got {mode!r}")
        self.base = _Pair(student, projectors).train()
        self.num = num
        self.mode = mode
        self.momentum, self.weight_decay, self.nesterov = float(sgd[0]), float(sgd[1]), bool(sgd[2])
        self._autocast = autocast
        self.params: Dict[str, torch.Tensor] = {
            n: p.detach().unsqueeze(0).repeat(num, *[1] * p.dim()).requires_grad_(True)
            for n, p in self.base.named_parameters()}
        self.buffers: Dict[str, torch.Tensor] = {
            n: b.detach().unsqueeze(0).repeat(num, *[1] * b.dim()) for n, b in self.base.named_buffers()}
        self.momentum_buffers: Dict[str, torch.Tensor] = (
            {n: torch.zeros_like(p) for n, p in self.params.items()} if self.momentum else {})
        self._norms = [m for m in self.base.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for m in self._norms:
            if m.momentum is None:
                raise ValueError("the batched engine needs BatchNorm layers with a numeric momentum "
                                 "(momentum=None, the cumulative average, reads the step count on the host)")

    # --- rows --------------------------------------------------------------------------------
    def _writable_buffers(self) -> Dict[str, torch.Tensor]:
        """The buffers, copied first: a pending forward's graph keeps the tensors it normalised
        with (BatchNorm's backward takes its running statistics), which must not change before
        its backward. Parameters need no copy: forwards use clones or indexed copies of them."""
        self.buffers = {n: b.clone() for n, b in self.buffers.items()}
        return self.buffers

    @torch.no_grad()
    def load_row(self, k: int, student: nn.Module, projectors: Optional[nn.Module]) -> None:
        """Row k becomes a copy of these modules (a fresh student: zero momentum)."""
        fresh = _Pair(student, projectors)
        for n, p in fresh.named_parameters():
            self.params[n][k].copy_(p)
        buffers = self._writable_buffers()
        for n, b in fresh.named_buffers():
            buffers[n][k].copy_(b)
        for buf in self.momentum_buffers.values():
            buf[k].zero_()

    def row_state(self, k: int) -> dict:
        """Row k as {"student": state dict, "projectors": state dict or None, "momentum": {name:
        buffer}}; the module state dicts load into a student built by `init_student`."""
        out = {"student": {}, "projectors": None if self.base.projectors is None else {}, "momentum": {}}
        for source in (self.params, self.buffers):
            for name, t in source.items():
                part, key = name.split(".", 1)
                out[part][key] = t[k].detach().clone()
        out["momentum"] = {n: b[k].clone() for n, b in self.momentum_buffers.items()}
        return out

    @torch.no_grad()
    def load_row_state(self, k: int, state: dict) -> None:
        for source in (self.params, self._writable_buffers()):
            for name, t in source.items():
                part, key = name.split(".", 1)
                t[k].copy_(state[part][key])
        for name, buf in self.momentum_buffers.items():
            buf[k].copy_(state["momentum"][name])

    # --- training ----------------------------------------------------------------------------
    def measure(self, data, temperature: float, keep_maps: bool, shared: bool = False,
                rows: Optional[torch.Tensor] = None) -> Batch:
        """The train-mode forward of the students (of `rows`, default all) and their `Batch`, with
        a leading dimension over those rows. `data` = (x, y, index, teacher outputs, teacher
        statistics): stacked with the same leading dimension, the same for every row (`shared`),
        or a list of one such tuple per row."""
        params = ({n: p.clone() for n, p in self.params.items()} if rows is None  # the clone: resets
                  else {n: p[rows] for n, p in self.params.items()})               # may write rows later
        buffers = self.buffers if rows is None else {n: b[rows] for n, b in self.buffers.items()}

        def one(p, b, x, y, index, t_outs, teacher) -> Batch:
            with self._autocast():
                s_out, projected = functional_call(self.base, (p, b), (x,))
            return measure(x, y, index, t_outs, teacher, s_out, projected, temperature, keep_maps)

        count = len(next(iter(params.values())))
        if self.mode == "grouped":
            batch = self._grouped_measure(params, buffers, _stack(data) if isinstance(data, list) else data,
                                          temperature, keep_maps, shared)
        elif self.mode == "vmap":
            if isinstance(data, list):
                data = _stack(data)
            in_data = None if shared else 0
            batch = vmap(one, in_dims=(0, 0) + (in_data,) * 5, randomness="error")(params, buffers, *data)
        else:  # the same function row by row (views of the stacked tensors), then stacked
            if not isinstance(data, list):
                data = [data if shared else _pytree.tree_map(lambda t: t[i], data) for i in range(count)]
            batch = _stack([one({n: v[i] for n, v in params.items()}, {n: v[i] for n, v in buffers.items()}, *d)
                            for i, d in enumerate(data)])
        if rows is not None:
            with torch.no_grad():
                for n, b in self._writable_buffers().items():
                    b[rows] = buffers[n]
        return batch

    def _grouped_measure(self, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor], data,
                         temperature: float, keep_maps: bool, shared: bool) -> Batch:
        """`measure` of every row with the students (and projectors) as one grouped network."""
        x, y, index, t_outs, teacher = data
        (sp, sb), (pp, pb) = _parts(params, buffers, "student."), _parts(params, buffers, "projectors.")
        bank = self.base.projectors
        with self._autocast():
            s_out = grouped.students_forward(self.base.student, sp, sb, x, shared)
            # without kept maps, the projected maps are never needed as such: the fused feature terms
            fused = bank is not None and not keep_maps and s_out.feature_map.dtype in (torch.float32, torch.float64)
            if fused:
                affine = grouped.projector_affine(bank, pp, pb, s_out.feature_map)
            elif bank is not None:
                projected = grouped.projectors_forward(bank, pp, pb, s_out.feature_map)
        in_data = None if shared else 0
        batch = vmap(lambda xx, yy, ii, tt, te, so: measure(xx, yy, ii, tt, te, so, None, temperature, keep_maps),
                     in_dims=(in_data,) * 5 + (0,), randomness="error")(x, y, index, t_outs, teacher, s_out)
        if bank is None:
            return batch
        if fused:
            feat_mse, cos = fused_feature_terms(affine, [p.relu for p in bank], t_outs)     # (K, B, M) each
            return dataclasses.replace(batch, feat_mse=feat_mse, cos=cos)
        feat_mse, cos = feature_terms(projected, t_outs)
        return dataclasses.replace(batch, feat_mse=feat_mse, cos=cos,
                                   projected=[p.detach() for p in projected] if keep_maps else None)

    @torch.no_grad()
    def sgd_step(self, lr: torch.Tensor) -> None:
        """One SGD step of every row after `backward`, row k with learning rate lr[k] (K,), then
        clear the gradients. The update rule is `torch.optim.SGD`'s (dampening 0)."""
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self.momentum_buffers[name]
                buf.mul_(self.momentum).add_(g)  # zero after a reset: the first step gives buf = g, as torch
                g = g.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.addcmul_(g, -lr.view(-1, *[1] * (p.dim() - 1)))
            p.grad = None

    def set_tracking(self, track: bool) -> None:
        """Whether train-mode forwards update the BatchNorm running statistics."""
        for m in self._norms:
            m.track_running_stats = track

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def correct_and_ce(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                       fmt: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(number correct, summed CE) of every student in eval mode on the same (x, y): (K, 2)."""
        def logits(p, b, xc):
            with self._autocast():
                return functional_call(self.base, (p, b), (xc,), {"project": False})[0].logits.float()

        def all_logits(xc):
            if self.mode == "grouped":
                sp, sb = _parts(self.params, self.buffers, "student.")
                with self._autocast():
                    return grouped.students_forward(self.base.student, sp, sb, xc, shared=True).logits.float()
            if self.mode == "vmap":
                return vmap(logits, in_dims=(0, 0, None))(self.params, self.buffers, xc)
            return torch.stack([logits({n: v[k] for n, v in self.params.items()},
                                       {n: v[k] for n, v in self.buffers.items()}, xc) for k in range(self.num)])

        self.base.eval()
        try:
            out = torch.zeros(self.num, 2, device=y.device)
            for i in range(0, len(x), batch_size):
                yc = y[i:i + batch_size]
                z = all_logits(fmt(x[i:i + batch_size]))                       # (K, b, C)
                out[:, 0] += (z.argmax(-1) == yc).sum(-1)
                out[:, 1] += F.cross_entropy(z.flatten(0, 1), yc.repeat(self.num), reduction="none").view(
                    self.num, -1).sum(-1)
        finally:
            self.base.train()
        return out


def _parts(params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor], prefix: str):
    """The parameters and buffers under `prefix` ("student." or "projectors."), prefix removed."""
    return tuple({n[len(prefix):]: t for n, t in d.items() if n.startswith(prefix)} for d in (params, buffers))


def _stack(rows: list):
    """A list of pytrees (Batches, data tuples) of the same structure -> one with stacked leaves."""
    return _pytree.tree_map(lambda *parts: torch.stack(parts), *rows)


def index_rows(full: Batch, part: Batch, rows: torch.Tensor) -> Batch:
    """`full` with the rows `rows` replaced by `part` (out of place, so gradients reach both)."""
    return _pytree.tree_map(lambda f, p: f.index_put((rows,), p), full, part)


def row_of(batch: Batch, k: int) -> Batch:
    """Row k of a stacked `Batch`: the single engine's `Batch` of student k (views)."""
    return _pytree.tree_map(lambda t: t[k], batch)
