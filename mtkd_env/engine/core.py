"""The distillation engine: the one place where a multi-teacher KD iteration happens.

The env, the agents, the baselines and the benchmarks all drive this class. One iteration:

1. `prepare()` draws the next batch, runs the frozen teachers (no grad) and the student with its
   projectors (with grad), and computes the per-sample quantities both the loss and the agent's
   state need: KL (B, M), feature MSE (B, M), cosine (B, M), teacher CE (B, M), student CE (B,).
2. The policy looks at those statistics and chooses weights.
3. `apply(weights)` forms `CE + alpha * sum_m wL*KL + beta * sum_m wF*MSE` from the *same* forward,
   backpropagates, steps the optimiser and the LR schedule.

Keeping the student forward of step 1 for step 3 (as MTKD-RL's code does) means the state costs
no extra forward pass.

Methods that need more of the step than weights use two further APIs, which never touch the real
student, projectors, optimiser or BatchNorm statistics:

- `forward_with(x, y, params)`: the same per-sample quantities for any inputs, with the student and
  projectors evaluated under the given parameters (`torch.func.functional_call`), so gradients flow
  into those parameters;
- `virtual_optimizer()`: a differentiable copy of the optimiser step (`mtkd_env.engine.virtual.VirtualSGD`)
  starting from the current parameters and momentum buffers.

Together they unroll "virtual" steps of the student (MMKD's meta step) without a second copy of
the step.

**Twin.** With `twin=True` the engine trains a second student in lockstep: a reference trained with
equal weights 1/M (AVER) on exactly the agent's batches, from exactly the agent's initialisation
(a copy made at `reset`). It shares the teachers' forward of every batch, so it costs one more
student forward + backward per iteration and nothing on the teacher side. Paired rewards measure
the agent's student against it (`probe_loss(twin=True)`, `split_metrics(..., twin=True)`); the
agent's own trajectory is the same with or without a twin.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from .. import models
from ..config import ConfigError, EnvConfig, default_cache_dir
from ..data import DatasetSplits, DeviceLoader, build_dataset
from ..models.projectors import ProjectorBank
from ..protocols import EvalSet, TrainLoader
from ..runtime import distributed
from ..runtime.distributed import DistContext
from ..runtime.resources import resolve_device
from ..teachers import Teacher, load_pool
from ..tasks import Task, get_task
from ..tasks.batch import Batch, TeacherStats, loss_terms
from ..runtime.errors import unknown_name
from .teacher_cache import TeacherCache, use_cache
from .trainee import Trainee
from .virtual import VirtualSteps

__all__ = ["DistillationEngine", "Batch", "resolve_device"]


class DistillationEngine(VirtualSteps):
    """Owns data, teachers, student, projectors, optimiser and LR schedule of one episode.

    The virtual-step API (`trainable_parameters`, `forward_with`, `virtual_optimizer`) comes from
    `mtkd_env.engine.virtual.VirtualSteps`."""

    def __init__(self, config: EnvConfig, dist_ctx: Optional[DistContext] = None, twin: bool = False) -> None:
        self.config = cfg = config
        if cfg.student not in models.available():  # before any data or teacher work (not at the first reset)
            raise unknown_name("model", cfg.student, models.available())
        try:
            self.task: Task = get_task(cfg.task)
        except ConfigError as exc:
            raise ConfigError(f"task: {exc}") from None
        if self.task.dense and cfg.cache_teacher_outputs:
            raise ConfigError(f"cache_teacher_outputs: caches classification outputs only; the {cfg.task} task runs "
                              f"its teachers on every batch (set cache_teacher_outputs to null or false)")
        if self.task.dense and cfg.teacher_views:
            raise ConfigError(f"teacher_views: fixed views exist for classification only, not the {cfg.task} task "
                              f"(set teacher_views=0)")
        self.has_twin = bool(twin)
        self.dist = dist_ctx or distributed.context()
        self.device = distributed.device_for(self.dist, resolve_device(cfg.device))
        splits = build_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.dataset_kwargs)
        data_task = getattr(splits, "task", "classification")
        if data_task != cfg.task:
            raise ConfigError(f"task: dataset {cfg.dataset!r} has {data_task} targets but task is {cfg.task!r}; set "
                              f"task={data_task!r} or choose a {cfg.task} dataset")
        if isinstance(splits, DatasetSplits):
            for split in ("train", "val", "test"):
                self.task.check_targets(getattr(splits, f"{split}_y"), splits.num_classes, f"{cfg.dataset} {split}",
                                        splits.input_shape)
        self.num_classes = splits.num_classes
        self.input_shape = splits.input_shape
        self.class_groups: Optional[List[List[int]]] = getattr(splits, "class_groups", None)
        """The dataset's class groups (lists of class indices), None where it has none."""
        self.bank: List[Teacher] = load_pool(
            cfg.teachers, splits, self.device, cfg.teacher_cache_dir or f"{default_cache_dir()}/teachers",
            seed=cfg.teacher_seed, data_seed=cfg.data_seed, epochs=cfg.teacher_epochs,
            noisy_fraction=cfg.noisy_label_fraction, show_progress=cfg.show_progress,
            dataset_name=cfg.dataset, dataset_kwargs=cfg.dataset_kwargs, data_dir=cfg.data_dir, task=self.task)
        dev = self.device
        # Eval splits: device tensors for in-memory datasets (val_x etc. set), or streamed from
        # disk (val_x etc. None; evaluation iterates `val_set.batches`).
        self.val_set, self.test_set = splits.eval_set("val", dev), splits.eval_set("test", dev)
        self.val_x, self.val_y = self.val_set.x, self.val_set.y
        self.test_x, self.test_y = self.test_set.x, self.test_set.y
        self.probe_x, self.probe_y = self.val_set.head(cfg.probe_size)
        self._shape_probe = self.val_set.head(2)[0]
        self.loader: TrainLoader = splits.train_loader(cfg.batch_size, cfg.augment, dev, rank=self.dist.rank,
                                                        world_size=self.dist.world_size)
        if cfg.cache_teacher_outputs and not isinstance(self.loader, DeviceLoader):
            raise ConfigError(f"cache_teacher_outputs: needs an in-memory dataset; {cfg.dataset!r} is streamed "
                              f"from disk (set cache_teacher_outputs=null to cache only where it is exact)")
        if cfg.teacher_views:
            if not isinstance(self.loader, DeviceLoader):
                raise ConfigError(f"teacher_views: needs an in-memory dataset; {cfg.dataset!r} is streamed from disk "
                                  f"(set teacher_views=0)")
            self.loader.fix_views(cfg.teacher_views, cfg.data_seed)
        with torch.no_grad():
            outs = [t.model(self._shape_probe) for t in self.bank]
        self._bank_feature_shapes = [tuple(o.feature_map.shape[1:]) for o in outs]
        self.bank_embedding_dims = [int(o.embedding.shape[1]) for o in outs]
        self.student_embedding_dim: Optional[int] = None  # (D_s,), measured only when the state needs it
        if cfg.sample_obs_student:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the throw-away init leaves the RNG alone
                probe = models.build(cfg.student, num_classes=self.num_classes, input_shape=self.input_shape).eval()
                self.student_embedding_dim = int(probe(self._shape_probe.cpu()).embedding.shape[1])
        self._with_cos = cfg.granularity == "sample" or cfg.obs_features is None or "cos" in cfg.obs_features
        """Whether `Batch.cos` is computed: only the observation reads it."""
        if cfg.max_steps is not None:
            self.total_iterations = cfg.max_steps * cfg.steps_per_action
        else:
            self.total_iterations = max(1, math.ceil(cfg.epochs * self.loader.batches_per_epoch))
        self.total_steps = math.ceil(self.total_iterations / cfg.steps_per_action)
        self._amp = cfg.amp == "bf16" and self.device.type == "cuda"
        if cfg.cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self._bank_forwards = [self._prepare_module(t.model) for t in self.bank]
        self._teacher_cache: Optional[TeacherCache] = None
        self.pool: Tuple[int, ...] = ()
        self.use_pool(tuple(range(cfg.pool_size or len(self.bank))))
        self.main: Optional[Trainee] = None
        self.twin: Optional[Trainee] = None
        self.iteration = 0
        self.batch: Optional[Batch] = None
        self.twin_batch: Optional[Batch] = None
        """The twin's view of the prepared batch (same teachers' outputs), None without a twin."""
        self._loader_state_before_batch: Optional[dict] = None

    def use_pool(self, pool: Tuple[int, ...]) -> None:
        """Make bank teachers `pool` (indices into `config.teachers`, in this order) the active
        pool: `teachers`, their shapes, forwards and cached outputs. Every episode has M teachers,
        so `len(pool)` must stay the same; the next `reset` builds projectors for the new pool."""
        pool = tuple(int(i) for i in pool)
        if pool == self.pool:  # the same instance again: its teachers and cache are in place
            return
        if self.pool and len(pool) != len(self.pool):
            raise ValueError(f"a pool of {len(pool)} teachers replaces one of {len(self.pool)}; the observation "
                             f"and action spaces need the same number every episode")
        self.pool = pool
        self.teachers: List[Teacher] = [self.bank[i] for i in pool]
        self.num_teachers = len(pool)
        self.teacher_feature_shapes = [self._bank_feature_shapes[i] for i in pool]
        self.teacher_embedding_dims = [self.bank_embedding_dims[i] for i in pool]
        self._teacher_forwards = [self._bank_forwards[i] for i in pool]
        # One cache per active pool (rebuilt when the pool changes: M teacher forwards over the
        # training split, a fraction of one episode), so that a bank of many teachers never holds
        # all of their outputs at once.
        self._teacher_cache = None
        if self._caches_teachers():
            cfg = self.config
            self._teacher_cache = TeacherCache.build(
                self._teacher_forwards, *self.loader.rows(), self.num_classes, self.teacher_feature_shapes,
                self.teacher_embedding_dims, cfg.kd_temperature, cfg.eval_batch_size, self._autocast, self._format)

    # --- episode lifecycle -----------------------------------------------------------------
    def reset(self, seed: int) -> Batch:
        """Fresh student, projectors, optimiser and data order, all from `seed` (and a twin that
        starts as an exact copy of the student when the engine has one)."""
        student, projectors = self.init_student(seed)
        twin_modules = (copy.deepcopy(student), copy.deepcopy(projectors)) if self.has_twin else None
        self.main = self._trainee(student, projectors)
        self.twin = None if twin_modules is None else self._trainee(*twin_modules)
        self.loader.reset(seed + 1)
        self.iteration = 0
        self.batch = self.prepare()
        return self.batch

    def init_student(self, seed: int) -> Tuple[nn.Module, Optional[ProjectorBank]]:
        """The fresh student (train mode, on the device) and projectors (None without feature KD)
        of an episode seeded `seed`: a pure function of the seed, leaving the global RNG alone.
        `reset` trains these; the batched engine stacks one per sub-env."""
        cfg = self.config
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            student = models.build(cfg.student, num_classes=self.num_classes,
                                   input_shape=self.input_shape).to(self.device).train()
            projectors = None
            if cfg.feature_kd:
                with torch.no_grad():  # eval mode: the shape probe must not touch BN statistics
                    s_channels = student.eval()(self._shape_probe).feature_map.shape[1]
                student.train()
                projectors = ProjectorBank(s_channels, self.teacher_feature_shapes).to(self.device).train()
        return student, projectors

    def _trainee(self, student: nn.Module, projectors: Optional[ProjectorBank]) -> Trainee:
        cfg = self.config
        params = list(student.parameters()) + ([] if projectors is None else list(projectors.parameters()))
        # foreach: the same arithmetic as the per-parameter loop (bit for bit), in a few calls
        # instead of four per parameter, which on the CPU is half the optimiser's step time.
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.momentum > 0, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return Trainee(student, projectors, optimizer, scheduler, self._prepare_module(student, trained=True),
                       None if projectors is None else self._prepare_module(projectors, trained=True))

    # The agent's student, under the names the rest of the code uses.
    @property
    def student(self) -> Optional[nn.Module]:
        return None if self.main is None else self.main.student

    @property
    def projectors(self) -> Optional[ProjectorBank]:
        return None if self.main is None else self.main.projectors

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        return None if self.main is None else self.main.optimizer

    @property
    def scheduler(self):
        return None if self.main is None else self.main.scheduler

    def _lr_factor(self, iteration: int) -> float:
        cfg, progress = self.config, iteration / self.total_iterations
        if cfg.lr_schedule == "multistep":
            return cfg.lr_gamma ** sum(progress >= m for m in cfg.lr_milestones)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    @property
    def lr(self) -> float:
        return self.config.lr * self._lr_factor(self.iteration)

    @property
    def done(self) -> bool:
        return self.iteration >= self.total_iterations

    # --- one iteration ---------------------------------------------------------------------
    def _prepare_module(self, module: nn.Module, trained: bool = False):
        """The callable used in the hot path: the module in channels_last if asked, then (trained
        modules under torch.distributed) wrapped in DDP so gradients are averaged over ranks, then
        compiled if asked."""
        if self.config.channels_last:
            module.to(memory_format=torch.channels_last)
        if trained and self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        return torch.compile(module, mode=self.config.compile_mode) if self.config.compile else module

    def _autocast(self):
        # Without AMP a no-op context: a disabled torch.autocast still costs tens of microseconds
        # per entry, several times a step.
        if not self._amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self._memory_format) if x.dim() == 4 else x

    def _caches_teachers(self) -> bool:
        """`EnvConfig.cache_teacher_outputs` resolved for this engine (`teacher_cache.use_cache`)."""
        cfg, width = self.config, TeacherCache.row_width(self.num_classes, self.teacher_feature_shapes,
                                                          self.teacher_embedding_dims)
        if self.task.dense:  # the cache's row layout holds one logit vector per image
            return False
        if cfg.teacher_views:  # the fixed views exist for the cache (the config refuses it off)
            return True
        return use_cache(cfg.cache_teacher_outputs, cfg.augment, isinstance(self.loader, DeviceLoader),
                         len(self.loader.x) * width * 4 if isinstance(self.loader, DeviceLoader) else 0)

    @property
    def caches_teacher_outputs(self) -> bool:
        """Whether this engine gathers the teachers' outputs from its cache instead of running them."""
        return self._teacher_cache is not None

    def teacher_side(self, x: torch.Tensor, y: torch.Tensor,
                     index: Optional[torch.Tensor]) -> Tuple[List[models.ModelOutput], TeacherStats]:
        """The teachers' outputs and statistics of a batch (x (B, ...), y (B,)): one gather from the
        cache for training rows `index` (B,) (`DeviceLoader.rows`), else (no cache, or `index` None: inputs that are not
        training rows) M forwards and `teacher_stats`."""
        if self._teacher_cache is not None and index is not None:
            return self._teacher_cache.lookup(index)
        with torch.no_grad(), self._autocast():
            t_outs = [f(x) for f in self._teacher_forwards]
        return t_outs, self.task.teacher_stats(t_outs, y, self.config.kd_temperature)

    def prepare(self) -> Batch:
        """Draw the next batch; forward teachers (no grad) and student + projectors (grad); the
        twin's forward of the same batch goes to `twin_batch`."""
        self._loader_state_before_batch = self.loader.state_dict()
        x, y, index = self.loader.next()
        x = self._format(x)
        t_outs, teacher = self.teacher_side(x, y, index)
        self.twin_batch = None if self.twin is None else self._student_pass(self.twin, x, y, index, t_outs, teacher)
        return self._student_pass(self.main, x, y, index, t_outs, teacher)

    def _student_pass(self, trainee: Trainee, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                      t_outs: List[models.ModelOutput], teacher: TeacherStats) -> Batch:
        """The trainee's forward (with grad) and everything the loss and the state need."""
        with self._autocast():
            s_out = trainee.forward(x)
            projected = None if trainee.projector_forward is None else trainee.projector_forward(s_out.feature_map)
        return self.task.measure(x, y, index, t_outs, teacher, s_out, projected, self.config.kd_temperature,
                                 self.config.keep_feature_maps, self._with_cos)

    def loss_terms(self, batch: Batch, w_logit: torch.Tensor, w_feat: torch.Tensor):
        """Per-sample total loss (B,) and the batch-mean KD and feature terms
        (`mtkd_env.tasks.batch.loss_terms` with this config's coefficients).

        `w_logit`, `w_feat`: (M,) or (B, M) weights; broadcast over the batch.
        """
        return loss_terms(batch, w_logit, w_feat, self.config.kd_alpha, self.config.feat_beta)

    def apply(self, w_logit: torch.Tensor, w_feat: torch.Tensor) -> dict:
        """Update the student on the prepared batch with the given weights (and the twin, when
        there is one, with 1/M). The caller measures what it needs on the updated student, then
        calls `advance()` for the next batch (so that measurements never see a forward of a batch
        the student has not trained on).

        Returns device tensors: per-sample loss (B,), mean loss, KD and feature terms.
        """
        batch = self.batch
        total, kd, feat = self.loss_terms(batch, w_logit, w_feat)
        loss = total.mean()
        objective, trainees = loss, [self.main]
        if self.twin is not None:
            # The twin's graph is disjoint from the student's, so one backward of the sum gives each
            # exactly its own gradient.
            equal = torch.full((self.num_teachers,), 1.0 / self.num_teachers, device=self.device)
            objective = objective + self.loss_terms(self.twin_batch, equal, equal)[0].mean()
            trainees.append(self.twin)
        for trainee in trainees:
            trainee.zero_grad()
        objective.backward()
        for trainee in trainees:
            trainee.step()
        self.iteration += 1
        out = {"per_sample_loss": total.detach(), "loss": loss.detach(), "kd_loss": kd.detach(),
               "feat_loss": feat.detach(), "student_ce": batch.student_ce.detach().mean(),
               "student_acc": batch.student_correct.mean()}
        return out

    def advance(self) -> None:
        """Prepare the next batch (after `apply`)."""
        self.batch = self.prepare()

    # --- measurements ----------------------------------------------------------------------
    def _evaluated(self, twin: bool) -> nn.Module:
        if twin and self.twin is None:
            raise RuntimeError("this engine has no twin (construct it with twin=True)")
        return self.twin.student if twin else self.main.student

    def _eval_forward(self, module: nn.Module):
        def forward(x: torch.Tensor) -> models.ModelOutput:
            with self._autocast():  # the bare module: a DDP forward here would re-broadcast BN buffers in place
                return module(self._format(x))

        return forward

    def correct_count(self, x: torch.Tensor, y: torch.Tensor, twin: bool = False) -> torch.Tensor:
        """Number of correct student predictions on (x, y), as a 0-d device tensor (no sync)."""
        module = self._evaluated(twin)
        return self.task.sums(module, x, y, self.config.eval_batch_size, self._eval_forward(module))[0]

    def val_accuracy(self, twin: bool = False) -> torch.Tensor:
        return self.split_accuracy(self.val_set, twin)

    def test_accuracy(self, twin: bool = False) -> torch.Tensor:
        return self.split_accuracy(self.test_set, twin)

    def split_accuracy(self, eval_set: EvalSet, twin: bool = False) -> torch.Tensor:
        """Student accuracy over an eval set (in device memory or streamed), a 0-d device tensor."""
        return self.split_metrics(eval_set, twin)[0]

    def split_metrics(self, eval_set: EvalSet, twin: bool = False) -> torch.Tensor:
        """(metric, mean loss) of the student (or the twin) over an eval set: a (2,) device tensor; the
        task's metric (accuracy, mIoU, mAP) and mean per-image loss (`Task.evaluate`)."""
        module = self._evaluated(twin)
        return self.task.evaluate(module, eval_set, self.config.eval_batch_size, self._eval_forward(module))

    def probe_loss(self, twin: bool = False) -> torch.Tensor:
        """Student (or twin) loss (CE; per image for dense tasks) on the fixed probe batch, in eval mode,
        as a 0-d device tensor."""
        module = self._evaluated(twin)
        sums = self.task.sums(module, self.probe_x, self.probe_y, self.config.eval_batch_size,
                              self._eval_forward(module))
        return sums[1] / len(self.probe_y)

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue the episode bit-identically (the prepared batch is
        recomputed from the loader state saved before it was drawn). A deep copy: later steps
        do not change it."""
        if self.main is None:
            raise RuntimeError("call reset() before state_dict(): there is no episode to save")
        state = {**self.main.state_dict(), "iteration": self.iteration, "loader": self._loader_state_before_batch}
        if self.twin is not None:
            state["twin"] = self.twin.state_dict()
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict) -> None:
        if self.main is None:
            raise RuntimeError("call reset() before load_state_dict() so the modules exist")
        if (self.twin is not None) != ("twin" in state):
            raise ValueError(f"episode state {'has' if 'twin' in state else 'has no'} twin student but this "
                             f"engine {'has' if self.twin is not None else 'has none'}; the reward must match")
        self.main.load_state_dict(state)
        if self.twin is not None:
            self.twin.load_state_dict(state["twin"])
        self.iteration = int(state["iteration"])
        self.loader.load_state_dict(state["loader"])
        # The saved BN running stats already include the prepared batch's forward. Train-mode BN
        # normalises with batch statistics, so re-running that forward without touching the
        # running stats reproduces both the batch and the saved state exactly.
        norms = [m for t in (self.main, self.twin) if t is not None for m in t.batch_norms()]
        for m in norms:
            m.track_running_stats = False
        try:
            self.batch = self.prepare()
        finally:
            for m in norms:
                m.track_running_stats = True
