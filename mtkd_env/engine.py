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
- `virtual_optimizer()`: a differentiable copy of the optimiser step (`mtkd_env.virtual.VirtualSGD`)
  starting from the current parameters and momentum buffers.

Together they unroll "virtual" steps of the student (MMKD's meta step) without a second copy of
the step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn
import torch.nn.functional as F

from . import distributed, models
from .config import ConfigError, EnvConfig, default_cache_dir
from .data import DeviceLoader, build_dataset
from .distributed import DistContext
from .projectors import ProjectorBank
from .teachers import Teacher, load_pool
from .virtual import VirtualSteps

__all__ = ["DistillationEngine", "Batch", "resolve_device"]


def _full(t: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision outputs in float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


@dataclass
class Batch:
    """Everything computed for one batch before the update. Shapes: B batch, M teachers, C classes."""

    x: torch.Tensor                      # (B, ...) inputs
    y: torch.Tensor                      # (B,) labels
    index: torch.Tensor                  # (B,) dataset indices
    teacher_logits: torch.Tensor         # (M, B, C), no grad
    teacher_embeddings: List[torch.Tensor]  # M x (B, D_m), no grad
    student_logits: torch.Tensor         # (B, C), with grad
    student_ce: torch.Tensor             # (B,), with grad
    kl: torch.Tensor                     # (B, M) T^2 KL(p_t^m || p_s), with grad
    feat_mse: Optional[torch.Tensor]     # (B, M) with grad, None when feature KD is off
    cos: torch.Tensor                    # (B, M) cosine(GAP(proj_m(F_s)), e_t^m), detached
    teacher_ce: torch.Tensor             # (B, M) CE of teacher logits vs labels (T = 1)
    teacher_entropy: torch.Tensor        # (B, M) entropy of softmax(teacher logits) (T = 1)
    teacher_correct: torch.Tensor        # (B, M) float 0/1
    student_correct: torch.Tensor        # (B,) float 0/1
    student_embedding: Optional[torch.Tensor] = None   # (B, D_s) pooled student feature map, detached
    # Kept only with `EnvConfig.keep_feature_maps` (and always by `forward_with`), all detached:
    student_feature_map: Optional[torch.Tensor] = None  # (B, C_s, H_s, W_s)
    teacher_feature_maps: Optional[List[torch.Tensor]] = None  # M x (B, C_m, H_m, W_m)
    projected: Optional[List[torch.Tensor]] = None     # M x (B, C_m, H_m, W_m) Phi_m(F_s); None without feature KD


class DistillationEngine(VirtualSteps):
    """Owns data, teachers, student, projectors, optimiser and LR schedule of one episode.

    The virtual-step API (`trainable_parameters`, `forward_with`, `virtual_optimizer`) comes from
    `mtkd_env.virtual.VirtualSteps`."""

    def __init__(self, config: EnvConfig, dist_ctx: Optional[DistContext] = None) -> None:
        self.config = cfg = config
        self.dist = dist_ctx or distributed.context()
        self.device = distributed.device_for(self.dist, resolve_device(cfg.device))
        splits = build_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.dataset_kwargs)
        self.num_classes = splits.num_classes
        self.input_shape = splits.input_shape
        self.teachers: List[Teacher] = load_pool(
            cfg.teachers, splits, self.device, cfg.teacher_cache_dir or f"{default_cache_dir()}/teachers",
            seed=cfg.teacher_seed, data_seed=cfg.data_seed, epochs=cfg.teacher_epochs,
            noisy_fraction=cfg.noisy_label_fraction, show_progress=cfg.show_progress,
            dataset_name=cfg.dataset, dataset_kwargs=cfg.dataset_kwargs, data_dir=cfg.data_dir)
        self.num_teachers = len(self.teachers)
        dev = self.device
        # Eval splits: device tensors for in-memory datasets (val_x etc. set), or streamed from
        # disk (val_x etc. None; evaluation iterates `val_set.batches`).
        self.val_set, self.test_set = splits.eval_set("val", dev), splits.eval_set("test", dev)
        self.val_x, self.val_y = self.val_set.x, self.val_set.y
        self.test_x, self.test_y = self.test_set.x, self.test_set.y
        self.probe_x, self.probe_y = self.val_set.head(cfg.probe_size)
        self._shape_probe = self.val_set.head(2)[0]
        self.loader: DeviceLoader = splits.train_loader(cfg.batch_size, cfg.augment, dev, rank=self.dist.rank,
                                                        world_size=self.dist.world_size)
        if cfg.cache_teacher_outputs and not isinstance(self.loader, DeviceLoader):
            raise ConfigError(f"cache_teacher_outputs: needs an in-memory dataset; {cfg.dataset!r} is streamed "
                              f"from disk")
        with torch.no_grad():
            outs = [t.model(self._shape_probe) for t in self.teachers]
        self.teacher_feature_shapes = [tuple(o.feature_map.shape[1:]) for o in outs]
        self.teacher_embedding_dims = [int(o.embedding.shape[1]) for o in outs]
        self.student_embedding_dim: Optional[int] = None  # (D_s,), measured only when the state needs it
        if cfg.sample_obs_student:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the throw-away init leaves the RNG alone
                probe = models.build(cfg.student, num_classes=self.num_classes, input_shape=self.input_shape).eval()
                self.student_embedding_dim = int(probe(self._shape_probe.cpu()).embedding.shape[1])
        if cfg.max_steps is not None:
            self.total_iterations = cfg.max_steps * cfg.steps_per_action
        else:
            self.total_iterations = max(1, math.ceil(cfg.epochs * self.loader.batches_per_epoch))
        self.total_steps = math.ceil(self.total_iterations / cfg.steps_per_action)
        self._amp = cfg.amp == "bf16" and self.device.type == "cuda"
        self._memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self._teacher_forwards = [self._prepare_module(t.model) for t in self.teachers]
        self._teacher_cache: Optional[List[torch.Tensor]] = None
        if cfg.cache_teacher_outputs:
            self._teacher_cache = self._run_teachers_over(self.loader.x)
        self.student: Optional[nn.Module] = None
        self.projectors: Optional[ProjectorBank] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self.iteration = 0
        self.batch: Optional[Batch] = None
        self._loader_state_before_batch: Optional[dict] = None

    # --- episode lifecycle -----------------------------------------------------------------
    def reset(self, seed: int) -> Batch:
        """Fresh student, projectors, optimiser and data order, all from `seed`."""
        cfg = self.config
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.student = models.build(cfg.student, num_classes=self.num_classes,
                                        input_shape=self.input_shape).to(self.device).train()
            self.projectors = None
            if cfg.feature_kd:
                with torch.no_grad():  # eval mode: the shape probe must not touch BN statistics
                    s_channels = self.student.eval()(self._shape_probe).feature_map.shape[1]
                self.student.train()
                self.projectors = ProjectorBank(s_channels, self.teacher_feature_shapes).to(self.device).train()
        params = list(self.student.parameters())
        if self.projectors is not None:
            params += list(self.projectors.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self._student_forward = self._prepare_module(self.student, trained=True)
        self._projector_forward = (None if self.projectors is None
                                   else self._prepare_module(self.projectors, trained=True))
        self.loader.reset(seed + 1)
        self.iteration = 0
        self.batch = self.prepare()
        return self.batch

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
        return torch.compile(module) if self.config.compile else module

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self._amp)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self._memory_format) if x.dim() == 4 else x

    @torch.no_grad()
    def _run_teachers_over(self, x_all: torch.Tensor) -> List[torch.Tensor]:
        """Teacher outputs for every training sample, flattened per teacher as
        [logits (N, C), embedding (N, D_m), feature map (N, C_m*H_m*W_m)] -> one (N, F_m) tensor each."""
        bs = self.config.eval_batch_size
        chunks = [[] for _ in self.teachers]
        for i in range(0, len(x_all), bs):
            with self._autocast():
                outs = [f(self._format(x_all[i:i + bs])) for f in self._teacher_forwards]
            for m, o in enumerate(outs):
                chunks[m].append(torch.cat([o.logits.float(), o.embedding.float(),
                                            o.feature_map.float().flatten(1)], dim=1))
        return [torch.cat(c) for c in chunks]

    def _teacher_outputs(self, x: torch.Tensor, index: torch.Tensor) -> List[models.ModelOutput]:
        if self._teacher_cache is None:
            with torch.no_grad(), self._autocast():
                return [f(x) for f in self._teacher_forwards]
        outs, c = [], self.num_classes
        for flat, shape, dim in zip(self._teacher_cache, self.teacher_feature_shapes, self.teacher_embedding_dims):
            rows = flat[index]
            outs.append(models.ModelOutput(rows[:, :c], rows[:, c + dim:].view(len(rows), *shape),
                                           rows[:, c:c + dim]))
        return outs

    def prepare(self) -> Batch:
        """Draw the next batch; forward teachers (no grad) and student + projectors (grad)."""
        self._loader_state_before_batch = self.loader.state_dict()
        x, y, index = self.loader.next()
        x = self._format(x)
        t_outs = self._teacher_outputs(x, index)
        with self._autocast():
            s_out = self._student_forward(x)
            projected = None if self._projector_forward is None else self._projector_forward(s_out.feature_map)
        return self._measure(x, y, index, t_outs, s_out, projected, self.config.keep_feature_maps)

    def _measure(self, x: torch.Tensor, y: torch.Tensor, index: Optional[torch.Tensor],
                 t_outs: List[models.ModelOutput], s_out: models.ModelOutput,
                 projected: Optional[List[torch.Tensor]], keep_maps: bool) -> Batch:
        """The per-sample quantities of a batch from the teachers' and the student's outputs."""
        cfg = self.config
        with torch.no_grad():
            t_logits = _full(torch.stack([o.logits for o in t_outs]))           # (M, B, C)
            log_pt = F.log_softmax(t_logits / cfg.kd_temperature, dim=-1)
            pt = log_pt.exp()
            logp1 = F.log_softmax(t_logits, dim=-1)
            teacher_entropy = -(logp1.exp() * logp1).sum(-1).T                   # (B, M)
            teacher_ce = -logp1.gather(-1, y.expand(len(t_outs), -1)[..., None]).squeeze(-1).T
            teacher_correct = (t_logits.argmax(-1) == y).T.float()
        s_logits = _full(s_out.logits)
        log_ps = F.log_softmax(s_logits / cfg.kd_temperature, dim=-1)            # (B, C)
        kl = cfg.kd_temperature ** 2 * (pt * (log_pt - log_ps)).sum(-1).T        # (B, M)
        student_ce = F.cross_entropy(s_logits, y, reduction="none")
        feat_mse = None
        cos = torch.zeros_like(teacher_ce)
        if projected is not None:
            feat_mse = torch.stack([((_full(p) - _full(o.feature_map)) ** 2).flatten(1).mean(1)
                                    for p, o in zip(projected, t_outs)], dim=1)  # (B, M)
            with torch.no_grad():
                cos = torch.stack([F.cosine_similarity(_full(p).mean((2, 3)), _full(o.embedding), dim=1)
                                   for p, o in zip(projected, t_outs)], dim=1)
        student_correct = (s_logits.detach().argmax(-1) == y).float()
        batch = Batch(x, y, index, t_logits, [o.embedding for o in t_outs], s_logits, student_ce,
                      kl, feat_mse, cos, teacher_ce, teacher_entropy, teacher_correct, student_correct,
                      student_embedding=s_out.embedding.detach())
        if keep_maps:
            batch.student_feature_map = s_out.feature_map.detach()
            batch.teacher_feature_maps = [o.feature_map for o in t_outs]
            batch.projected = None if projected is None else [p.detach() for p in projected]
        return batch

    def loss_terms(self, batch: Batch, w_logit: torch.Tensor, w_feat: torch.Tensor):
        """Per-sample total loss (B,) and the batch-mean KD and feature terms.

        `w_logit`, `w_feat`: (M,) or (B, M) weights; broadcast over the batch.
        """
        cfg = self.config
        kd = (w_logit * batch.kl).sum(-1)
        total = batch.student_ce + cfg.kd_alpha * kd
        feat = torch.zeros_like(kd)
        if batch.feat_mse is not None:
            feat = (w_feat * batch.feat_mse).sum(-1)
            total = total + cfg.feat_beta * feat
        return total, kd.mean(), feat.mean()

    def apply(self, w_logit: torch.Tensor, w_feat: torch.Tensor) -> dict:
        """Update the student on the prepared batch with the given weights. The caller measures
        what it needs on the updated student, then calls `advance()` for the next batch (so that
        measurements never see a forward of a batch the student has not trained on).

        Returns device tensors: per-sample loss (B,), mean loss, KD and feature terms.
        """
        batch = self.batch
        total, kd, feat = self.loss_terms(batch, w_logit, w_feat)
        loss = total.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        out = {"per_sample_loss": total.detach(), "loss": loss.detach(), "kd_loss": kd.detach(),
               "feat_loss": feat.detach(), "student_ce": batch.student_ce.detach().mean(),
               "student_acc": batch.student_correct.mean()}
        return out

    def advance(self) -> None:
        """Prepare the next batch (after `apply`)."""
        self.batch = self.prepare()

    # --- measurements ----------------------------------------------------------------------
    @torch.no_grad()
    def correct_count(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Number of correct student predictions on (x, y), as a 0-d device tensor (no sync)."""
        was_training = self.student.training
        self.student.eval()
        bs = self.config.eval_batch_size
        correct = torch.zeros((), device=self.device)
        for i in range(0, len(x), bs):
            with self._autocast():  # the bare module: a DDP forward here would re-broadcast BN buffers in place
                logits = self.student(self._format(x[i:i + bs])).logits
            correct += (logits.argmax(1) == y[i:i + bs]).sum()
        self.student.train(was_training)
        return correct

    def val_accuracy(self) -> torch.Tensor:
        return self.split_accuracy(self.val_set)

    def test_accuracy(self) -> torch.Tensor:
        return self.split_accuracy(self.test_set)

    def split_accuracy(self, eval_set) -> torch.Tensor:
        """Student accuracy over an eval set (in device memory or streamed), a 0-d device tensor."""
        if eval_set.x is not None:
            return self.correct_count(eval_set.x, eval_set.y) / len(eval_set)
        correct = torch.zeros((), device=self.device)
        for x, y in eval_set.batches(self.config.eval_batch_size):
            correct += self.correct_count(x, y)
        return correct / len(eval_set)

    @torch.no_grad()
    def probe_loss(self) -> torch.Tensor:
        """Student CE on the fixed probe batch, in eval mode, as a 0-d device tensor."""
        was_training = self.student.training
        self.student.eval()
        with self._autocast():
            logits = self.student(self._format(self.probe_x)).logits
        loss = F.cross_entropy(logits.float(), self.probe_y)
        self.student.train(was_training)
        return loss

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue the episode bit-identically (the prepared batch is
        recomputed from the loader state saved before it was drawn). A deep copy: later steps
        do not change it."""
        if self.student is None:
            raise RuntimeError("call reset() before state_dict(): there is no episode to save")
        return copy.deepcopy({"student": self.student.state_dict(),
                "projectors": None if self.projectors is None else self.projectors.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "iteration": self.iteration, "loader": self._loader_state_before_batch})

    def load_state_dict(self, state: dict) -> None:
        if self.student is None:
            raise RuntimeError("call reset() before load_state_dict() so the modules exist")
        self.student.load_state_dict(state["student"])
        if self.projectors is not None:
            self.projectors.load_state_dict(state["projectors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        self.loader.load_state_dict(state["loader"])
        # The saved BN running stats already include the prepared batch's forward. Train-mode BN
        # normalises with batch statistics, so re-running that forward without touching the
        # running stats reproduces both the batch and the saved state exactly.
        norms = [m for mod in (self.student, self.projectors) if mod is not None
                 for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for m in norms:
            m.track_running_stats = False
        try:
            self.batch = self.prepare()
        finally:
            for m in norms:
                m.track_running_stats = True
