"""`BatchedEngine`: K students distilled from one teacher pool in one process, batched.

The vector env's engine (`MultiTeacherKDVectorEnv`, `gym.make_vec(..., vectorization_mode=
"vector_entry_point")`). It holds one `DistillationEngine` as its *template* — data, teachers,
evaluation splits, LR schedule and the student initialisation (`init_student`) — so the teachers
are loaded once, and trains K students as a `StudentStack` (plus K twins when a reward needs
them). Each student row k has its own seed, initialisation, data order (its own `DeviceLoader`,
seeded as the single engine seeds its one), SGD momentum and iteration count (hence LR).

One iteration for all rows:

    engine.forward()                  # every row draws its batch; teachers (no grad) and students
                                      # (with grad) run on them; one stacked Batch (K, B, ...)
    engine.apply(w_logit, w_feat)     # (K, M) or (K, B, M) weights; one backward; one SGD update

The students' forward runs in one of `StudentStack`'s modes (`vectorize`): "grouped", the K
students as one grouped network (`mtkd_env.models.grouped`; the default on the CPU for the
architectures it covers: tiny_cnn, cnn, mlp), "vmap", one `vmap` over the stack (the default on
CUDA; the teachers then also run once on all K*B samples), or "rows", row by row (the CPU default
for other students; `True` / `False` mean "vmap" / "rows"). Either way one backward and one update
serve all rows.

`forward(rows)` prepares only some rows (a sub-env that resets alone). Evaluations of the
students (`evaluation`) cover all rows in one pass and are cached until the next
change of any student. `slots[k]` is row k with the interface of `DistillationEngine` that
`MultiTeacherKDEnv` drives, so each sub-env is an ordinary `MultiTeacherKDEnv` around its slot.

With `shared_batches=True` all rows draw the same batches (one loader, seeded from the first row's
episode seed when all rows reset together; a row that resets alone joins the running stream), so
the teachers' forward is shared by all students: the setting for paired comparisons of
weightings; off by default for RL diversity.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..config import ConfigError, EnvConfig
from ..data.tensor_data import DeviceLoader, to_device
from ..models import ModelOutput, grouped
from ..tasks.batch import Batch, TeacherStats, loss_terms
from .core import DistillationEngine
from .observe import sample_obs, teacher_obs
from .student_stack import MODES, StudentStack, index_rows, row_of

__all__ = ["BatchedEngine", "EngineSlot"]


class BatchedEngine:
    """K students in lockstep on one device (see the module docstring)."""

    def __init__(self, config: EnvConfig, num_students: int, twin: bool = False, shared_batches: bool = False,
                 vectorize: Union[bool, str, None] = None) -> None:
        if not isinstance(num_students, int) or num_students < 1:
            raise ConfigError(f"num_envs: expected an integer >= 1, got {num_students!r}")
        self.config = cfg = config
        if cfg.pool_size is not None:
            raise ConfigError("pool_size: the batched vector env trains every row against one teacher pool, but "
                              "instance sets change the pool per episode; use single envs (or SB3's DummyVecEnv)")
        self.template = t = DistillationEngine(cfg, twin=False)
        if t.task.dense:
            raise ConfigError(f"the batched vector env distils classifiers only; the {cfg.task} task runs one student "
                              f"per env (use the single env, or vec_env='dummy' / 'subproc')")
        if t.dist.enabled:
            raise ConfigError("the batched vector env runs in one process; under torchrun use one env per "
                              "process (MultiTeacherKDEnv) or vectorization_mode='sync'")
        if not isinstance(t.loader, DeviceLoader) or t.val_set.x is None:
            raise ConfigError(f"the batched vector env needs an in-memory dataset; {cfg.dataset!r} is streamed "
                              f"from disk (use vectorization_mode='sync' or 'async')")
        if t.total_iterations % cfg.steps_per_action:
            raise ConfigError(f"steps_per_action: the batched vector env needs episodes of whole steps; "
                              f"{t.total_iterations} iterations are not a multiple of {cfg.steps_per_action} "
                              f"(set max_steps, or epochs to a multiple)")
        self.num = k = num_students
        self.has_twin = bool(twin)
        self.shared_batches = bool(shared_batches)
        # Row 0 uses the template's loader; shared batches: one loader for every row.
        self.loaders: List[DeviceLoader] = [t.loader] * k if shared_batches else [t.loader] + [
            DeviceLoader(t.loader.x, t.loader.y, cfg.batch_size, t.loader.augment, views=t.loader.views)
            for _ in range(k - 1)]
        student, projectors = t.init_student(0)  # the architecture; rows are loaded by reset_rows
        sgd = (cfg.momentum, cfg.weight_decay, cfg.momentum > 0)
        self.mode = _mode(vectorize, t.device, student, projectors)
        self.main = StudentStack(student, projectors, k, sgd, t._autocast, self.mode)
        self.twin = None if not twin else StudentStack(copy.deepcopy(student), copy.deepcopy(projectors), k, sgd,
                                                       t._autocast, self.mode)
        self.iteration = [0] * k
        self.started = [False] * k
        self.batch: Optional[Batch] = None
        """The prepared batches of the agents' students, (K, B, ...) per tensor."""
        self.twin_batch: Optional[Batch] = None
        self._loader_states: List[Optional[dict]] = [None] * k
        self._fresh: Dict[int, int] = {}
        """Rows reset since the last forward -> their episode seeds."""
        self._cache: Dict[tuple, torch.Tensor] = {}
        self.slots = [EngineSlot(self, i) for i in range(k)]

    # --- shared facts --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.template.device

    @property
    def total_iterations(self) -> int:
        return self.template.total_iterations

    @property
    def done(self) -> bool:
        """Every row has finished its episode."""
        return all(i >= self.total_iterations for i in self.iteration)

    def lr(self, k: int) -> float:
        return self.config.lr * self.template._lr_factor(self.iteration[k])

    # --- episodes ----------------------------------------------------------------------------
    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int]) -> None:
        """Fresh students (and twins) in `rows` from their episode seeds, exactly as
        `DistillationEngine.reset` draws them; their first batches come with the next `forward`."""
        for k, seed in zip(rows, seeds):
            student, projectors = self.template.init_student(int(seed))
            self.main.load_row(k, student, projectors)
            if self.twin is not None:
                self.twin.load_row(k, student, projectors)
            if not self.shared_batches:
                self.loaders[k].reset(int(seed) + 1)
            self._fresh[k] = int(seed)
            self.iteration[k] = 0
            self.started[k] = True
        self._changed()

    def forward(self, rows: Optional[Sequence[int]] = None) -> None:
        """Draw the next batch of each row in `rows` (default: all) and run the forward of the
        teachers (no grad) and the students (with grad) on it."""
        t, cfg = self.template, self.config
        rows = list(range(self.num)) if rows is None else list(rows)
        if self.shared_batches and len(self._fresh) == self.num:  # every row starts afresh: a new stream
            self.loaders[0].reset(self._fresh[0] + 1)
        self._fresh = {}
        temperature = cfg.kd_temperature
        if self.shared_batches:
            state = self.loaders[0].state_dict()
            x, y, index = self.loaders[0].next()
            for k in rows:
                self._loader_states[k] = state
            x = t._format(x)
            data = (x, y, index, *t.teacher_side(x, y, index))
        else:
            drawn = []
            for k in rows:
                self._loader_states[k] = self.loaders[k].state_dict()
                drawn.append(self.loaders[k].next())
            if self.mode == "vmap":  # the teachers on all R*B samples at once
                x, y, index = (torch.stack(parts) for parts in zip(*drawn))        # (R, B, ...)
                r, b = y.shape
                flat, stats = t.teacher_side(t._format(x.flatten(0, 1)), y.flatten(), index.flatten())
                t_outs = [ModelOutput(*(o.reshape(r, b, *o.shape[1:]) for o in out)) for out in flat]
                data = (x, y, index, t_outs, _rows_of(stats, r))
            else:  # on the CPU one large teacher batch is slower than the rows' batches in turn
                data = []
                for x, y, index in drawn:
                    x = t._format(x)
                    data.append((x, y, index, *t.teacher_side(x, y, index)))
        full = len(rows) == self.num
        row_index = None if full else torch.tensor(rows, device=self.device)
        args = (data, temperature, cfg.keep_feature_maps, self.shared_batches, row_index)
        batch = self.main.measure(*args)
        twin_batch = None if self.twin is None else self.twin.measure(*args)
        if full:
            self.batch, self.twin_batch = batch, twin_batch
        else:
            self.batch = index_rows(self.batch, batch, row_index)
            if self.twin is not None:
                self.twin_batch = index_rows(self.twin_batch, twin_batch, row_index)
        self._changed()

    def advance(self) -> None:
        """The next batch of every row (after `apply`)."""
        self.forward()

    def apply(self, w_logit: torch.Tensor, w_feat: torch.Tensor) -> dict:
        """Update every row on its prepared batch: row k with weights w_logit[k], w_feat[k]
        ((K, M) or (K, B, M)), its twin with 1/M. Returns device tensors with a leading K:
        per-sample loss (K, B), mean loss, KD and feature terms, student CE and accuracy (K,)."""
        cfg, m = self.config, self.template.num_teachers
        batch = self.batch
        if w_logit.dim() == 2:  # (K, M): broadcast over the batch as the single engine does
            w_logit, w_feat = w_logit[:, None], w_feat[:, None]
        terms = torch.func.vmap(lambda b, wl, wf: loss_terms(b, wl, wf, cfg.kd_alpha, cfg.feat_beta))
        total, kd, feat = terms(batch, w_logit, w_feat)
        loss = total.mean(1)
        objective = loss.sum()  # the rows' graphs are disjoint: each row gets exactly its own gradient
        if self.twin is not None:
            equal = torch.full((m,), 1.0 / m, device=self.device)
            twin_total = torch.func.vmap(lambda b: loss_terms(b, equal, equal, cfg.kd_alpha, cfg.feat_beta)[0])(
                self.twin_batch)
            objective = objective + twin_total.mean(1).sum()
        objective.backward()
        lr = to_device(torch.tensor([self.lr(k) for k in range(self.num)]), self.device)  # no host sync
        for stack in (self.main, self.twin):
            if stack is not None:
                stack.sgd_step(lr)
        self.iteration = [i + 1 for i in self.iteration]
        self._changed()
        return {"per_sample_loss": total.detach(), "loss": loss.detach(), "kd_loss": kd.detach(),
                "feat_loss": feat.detach(), "student_ce": batch.student_ce.detach().mean(1),
                "student_acc": batch.student_correct.mean(1)}

    def observations(self) -> torch.Tensor:
        """Every row's observation part (what `MultiTeacherKDEnv._obs_tensor` computes for one):
        (K, 5M + 2) or (K, B, F)."""
        cfg = self.config
        if cfg.granularity == "teacher":
            return torch.func.vmap(teacher_obs)(self.batch)
        return torch.func.vmap(lambda b: sample_obs(b, cfg.sample_obs_embeddings, cfg.sample_obs_logits,
                                                    cfg.sample_obs_student))(self.batch)

    # --- evaluations ---------------------------------------------------------------------------
    def _changed(self) -> None:
        self._cache.clear()

    def evaluation(self, split: str, twin: bool = False) -> torch.Tensor:
        """Every row's student (or twin) in eval mode: "probe" -> probe CE (K,); "val" / "test" ->
        (accuracy, mean CE) (K, 2). Computed once per state of the students."""
        key = (split, twin)
        if key not in self._cache:
            stack = self.twin if twin else self.main
            if stack is None:
                raise RuntimeError("this engine has no twin (construct it with twin=True)")
            t = self.template
            x, y = (t.probe_x, t.probe_y) if split == "probe" else (
                (t.val_set.x, t.val_set.y) if split == "val" else (t.test_set.x, t.test_set.y))
            sums = stack.correct_and_ce(x, y, self.config.eval_batch_size, t._format) / len(y)
            self._cache[key] = sums[:, 1] if split == "probe" else sums
        return self._cache[key]

    # --- checkpointing -------------------------------------------------------------------------
    def row_state(self, k: int) -> dict:
        """Row k's episode: student, projectors and momentum (and the twin's), iteration, and the
        loader state before its prepared batch (which `reprepare` recomputes)."""
        state = {"main": self.main.row_state(k), "iteration": self.iteration[k], "loader": self._loader_states[k]}
        if self.twin is not None:
            state["twin"] = self.twin.row_state(k)
        return copy.deepcopy(state)

    def load_row_state(self, k: int, state: dict) -> None:
        """Row k from `row_state`; call `reprepare()` once all rows are loaded."""
        if (self.twin is not None) != ("twin" in state):
            raise ValueError(f"episode state {'has' if 'twin' in state else 'has no'} twin student but this "
                             f"engine {'has' if self.twin is not None else 'has none'}; the reward must match")
        self.main.load_row_state(k, state["main"])
        if self.twin is not None:
            self.twin.load_row_state(k, state["twin"])
        self.iteration[k] = int(state["iteration"])
        self._loader_states[k] = state["loader"]
        self.started[k] = True
        self._changed()

    def reprepare(self) -> None:
        """Recompute every row's prepared batch from the loader states saved before it, without
        touching the BatchNorm statistics (they already include that forward; train-mode BN uses
        batch statistics, so the batch comes out the same)."""
        if self.shared_batches and any(not _same_position(self._loader_states[0], s) for s in self._loader_states):
            raise RuntimeError("shared batches: the sub-envs were saved at different batches (a sub-env had just "
                               "reset alone), which one shared stream cannot recompute")
        for k in range(self.num) if not self.shared_batches else [0]:
            self.loaders[k].load_state_dict(self._loader_states[k])
        stacks = [s for s in (self.main, self.twin) if s is not None]
        for s in stacks:
            s.set_tracking(False)
        try:
            self.forward()
        finally:
            for s in stacks:
                s.set_tracking(True)


def _mode(vectorize: Union[bool, str, None], device: torch.device, student, projectors) -> str:
    """The students' forward mode: as asked (True / False: "vmap" / "rows"), or by device: "vmap"
    on CUDA, "grouped" on the CPU where the architecture has it, else "rows" (measured fastest:
    docs/vector.md)."""
    if vectorize is None:
        if device.type == "cuda":
            return "vmap"
        return "grouped" if grouped.supports(student, projectors) else "rows"
    mode = ("vmap" if vectorize else "rows") if isinstance(vectorize, bool) else vectorize
    if mode not in MODES:
        raise ConfigError(f"vectorize: expected one of {list(MODES)}, True, False or None, got {vectorize!r}")
    if mode == "grouped" and not grouped.supports(student, projectors):
        raise ConfigError(f"vectorize: {type(student).__name__} has no grouped form (mtkd_env.models.grouped); "
                          f"use 'vmap' or 'rows'")
    return mode


def _rows_of(stats: TeacherStats, r: int) -> TeacherStats:
    """The teacher statistics of R rows' batches drawn as one flat batch — (M, R*B, C) and (R*B, M)
    — in the stacked layout of the rows: (R, M, B, C) and (R, B, M)."""
    m = stats.logits.shape[0]

    def per_class(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(m, r, -1, t.shape[-1]).transpose(0, 1)

    def per_sample(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(r, -1, m)

    return TeacherStats(per_class(stats.logits), per_class(stats.log_pt), per_class(stats.pt),
                        per_sample(stats.entropy), per_sample(stats.ce), per_sample(stats.correct))


def _same_position(a: dict, b: dict) -> bool:
    return (a["epoch"], a["position"]) == (b["epoch"], b["position"]) and torch.equal(a["generator"], b["generator"])


class EngineSlot:
    """Row k of a `BatchedEngine` with the interface of `DistillationEngine` that
    `MultiTeacherKDEnv` uses. `reset` loads the row's fresh student; its batch is prepared by the
    engine's next `forward`. Training goes through `MultiTeacherKDVectorEnv.step`."""

    def __init__(self, core: BatchedEngine, k: int) -> None:
        self.core, self.k = core, k
        t = core.template
        self.config, self.device, self.dist = core.config, t.device, t.dist
        self.teachers, self.num_teachers, self.num_classes = t.teachers, t.num_teachers, t.num_classes
        self.teacher_embedding_dims, self.student_embedding_dim = t.teacher_embedding_dims, t.student_embedding_dim
        self.total_iterations, self.total_steps = t.total_iterations, t.total_steps
        self.val_set, self.test_set = t.val_set, t.test_set
        self.has_twin = core.has_twin

    @property
    def iteration(self) -> int:
        return self.core.iteration[self.k]

    @property
    def lr(self) -> float:
        return self.core.lr(self.k)

    @property
    def done(self) -> bool:
        return self.iteration >= self.total_iterations

    @property
    def loader(self) -> DeviceLoader:
        return self.core.loaders[self.k]

    @property
    def batch(self) -> Optional[Batch]:
        """This row's prepared `Batch` (views into the stacked one)."""
        if self.core.batch is None or not self.core.started[self.k]:
            return None
        return row_of(self.core.batch, self.k)

    @property
    def student(self):
        """The stack's architecture module once this row has a student (None before)."""
        return self.core.main.base.student if self.core.started[self.k] else None

    def reset(self, seed: int) -> None:
        self.core.reset_rows([self.k], [seed])

    def apply(self, *args, **kwargs):
        raise RuntimeError("a sub-env of the batched vector env is stepped by MultiTeacherKDVectorEnv.step")

    advance = apply

    def probe_loss(self, twin: bool = False) -> torch.Tensor:
        return self.core.evaluation("probe", twin)[self.k]

    def split_metrics(self, eval_set, twin: bool = False) -> torch.Tensor:
        split = "val" if eval_set is self.val_set else "test" if eval_set is self.test_set else None
        if split is None:
            raise ValueError("split_metrics: the batched engine evaluates its own val_set and test_set only")
        return self.core.evaluation(split, twin)[self.k]

    def state_dict(self) -> dict:
        return self.core.row_state(self.k)

    def load_state_dict(self, state: dict) -> None:
        self.core.load_row_state(self.k, state)
