"""MMKD: meta-learned per-sample teacher weights (Zhang, Chen, Wang, ICME 2023, "Adaptive
Multi-Teacher Knowledge Distillation with Meta-Learning"; code Rorozhl/MMKD @3ae1f8c,
`train_meta.py`, `models/meta_util.py`, `helper/meta_optimizer.py`, `dataset/buffer.py`).

Weights (per sample i, teacher m), from two small networks:

- logit weights `softmax(MLP([z_t^1 .. z_t^M, z_s]))`, teacher logits and the detached student
  logits concatenated (B, C(M+1)) -> hidden C(M+1)/2 (ReLU) -> M;
- feature weights `softmax(MLP(Gram rows))`: each model's batch Gram matrix f f^T (B x B) of its
  flattened feature map, M teachers then the (detached) student, concatenated (B, B(M+1)) ->
  hidden B(M+1)/2 (ReLU) -> M. The batch size is therefore fixed (the loader drops the last
  partial batch).

They drive the env's one distillation step like any other policy (`act` -> `env.step_weights`).
Meta step, after every `meta_freq`-th iteration: a batch of B samples from the hard buffer (256
samples: the first batches, then refreshed with misclassified ones), 2 virtual SGD steps of the
student on the matching loss (alpha * weighted KD + beta * weighted feature MSE, weights from the
networks), 1 virtual step on CE, then the CE at the resulting parameters is back-propagated
through the 3 unrolled steps into the networks (second order), Adam (lr 1e-3, wd 1e-4). As in
the reference, the networks read the student's logits and feature map detached, so the
meta-gradient does not follow the networks' influence on their own later inputs. The virtual
steps go through the engine's `forward_with` / `virtual_optimizer`, so they never change the real
student: the reference's roll-back is implicit.

Learning is online and per episode, as in the paper: `reset(seed)` (called at every
`env.reset`, or found by the policy when the env's iteration count goes back) re-initialises
the networks, the optimiser and the buffer from the seed. `state_dict()` / `load_state_dict()`
hold everything needed to continue an episode bit-identically.

Deviations from the reference: the meta schedule counts
iterations of the episode (after iterations meta_freq, 2 meta_freq, ...) instead of the batch
index within an epoch plus each epoch's last batch; the unrolled steps are differentiated exactly,
momentum included (the reference's adjoint treats momentum approximately); the loss is the env's
(alpha, beta, feature projectors) like every other policy's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from mtkd_env.runtime.errors import ConfigError

from .policies import FormulaPolicy, register_policy

__all__ = ["MMKDConfig", "WeightNet", "HardBuffer", "MMKD", "gram_rows", "logit_inputs"]


@dataclass
class MMKDConfig:
    """MMKD's hyperparameters (defaults: the reference code and its README run)."""

    meta_freq: int = 5
    """Iterations between meta steps (reference `--meta_freq`)."""
    meta_lr: float = 1e-3
    """Adam learning rate of the weight networks (`--meta_lr`)."""
    meta_weight_decay: float = 1e-4
    """Adam weight decay of the weight networks (`--meta_wd`)."""
    virtual_steps: int = 2
    """Virtual SGD steps on the matching loss before the one on CE."""
    hard_buffer: bool = True
    """Meta batches from the hard buffer (README run `--hard_buffer`); else the last trained batch."""
    buffer_size: int = 256
    """Samples in the hard buffer (`--buffer_size`)."""
    factor: int = 2
    """Hidden width of each weight network = input width // factor (`--factor`)."""

    def validate(self, batch_size: Optional[int] = None) -> None:
        for name in ("meta_freq", "buffer_size", "factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"mmkd option {name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.virtual_steps < 0:
            raise ValueError(f"mmkd option virtual_steps: expected an integer >= 0, got {self.virtual_steps!r}")
        for name in ("meta_lr", "meta_weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"mmkd option {name}: expected a number >= 0, got {getattr(self, name)!r}")
        if batch_size is not None and self.hard_buffer and self.buffer_size < batch_size:
            raise ValueError(f"mmkd option buffer_size: the hard buffer must hold at least one batch "
                             f"({batch_size} samples), got {self.buffer_size}")


class WeightNet(nn.Module):
    """(B, n_in) -> (B, M) rows on the simplex: Linear(n_in, n_in // factor) - ReLU - Linear - softmax."""

    def __init__(self, n_in: int, num_teachers: int, factor: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(n_in, max(1, n_in // factor))
        self.out = nn.Linear(max(1, n_in // factor), num_teachers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.out(F.relu(self.layer(x))), dim=-1)


def logit_inputs(batch) -> torch.Tensor:
    """(B, C(M+1)): teacher logits t_1..t_M then the detached student logits."""
    t = batch.teacher_logits                                            # (M, B, C)
    return torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1), batch.student_logits.detach()], dim=1)


def gram_rows(batch) -> torch.Tensor:
    """(B, B(M+1)): rows of each teacher's and then the student's batch Gram matrix f f^T."""
    maps = list(batch.teacher_feature_maps) + [batch.student_feature_map]
    dtype = batch.student_logits.dtype  # full precision (autocast maps may be bfloat16)
    flat = [f.to(dtype).reshape(f.shape[0], -1) for f in maps]
    return torch.cat([f @ f.T for f in flat], dim=1)


class HardBuffer:
    """MMKD's hard buffer: the first `capacity` training samples, then, per batch, its
    misclassified samples overwrite random slots. Holds inputs, labels and dataset indices."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng = int(capacity), rng
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.index: Optional[torch.Tensor] = None
        self.size = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, correct: torch.Tensor) -> None:
        """Put a batch (x (B, ...), y (B,), index (B,), correct (B,) 0/1 by the student's forward)."""
        if self.x is None:
            self.x = x.new_zeros((self.capacity, *x.shape[1:]))
            self.y, self.index = y.new_zeros(self.capacity), index.new_zeros(self.capacity)
        if self.size < self.capacity:
            take = min(len(x), self.capacity - self.size)
            rows = slice(self.size, self.size + take)
            self.x[rows], self.y[rows], self.index[rows] = x[:take], y[:take], index[:take]
            self.size += take
            return
        wrong = (correct < 0.5).nonzero().flatten()[:self.capacity]
        if len(wrong):
            slots = torch.as_tensor(self.rng.choice(self.capacity, len(wrong), replace=False), device=x.device)
            self.x[slots], self.y[slots], self.index[slots] = x[wrong], y[wrong], index[wrong]

    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n distinct stored samples (n <= size)."""
        pick = torch.as_tensor(self.rng.choice(self.size, n, replace=False), device=self.x.device)
        return self.x[pick], self.y[pick], self.index[pick]

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "index": self.index, "size": self.size,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y, self.index = state["x"], state["y"], state["index"]
        self.size = int(state["size"])
        self.rng.bit_generator.state = state["rng"]


@register_policy("mmkd")
class MMKD(FormulaPolicy):
    """MMKD as a policy that meta-learns its weight networks online within each episode."""

    per_sample = True
    options_allowed = tuple(f.name for f in dataclasses.fields(MMKDConfig))

    def __init__(self, env=None, *, seed: int = 0, **options: Any) -> None:
        self.config = MMKDConfig(**{k: v for k, v in options.items() if k in self.options_allowed})
        self.config.validate()
        self.logit_net: Optional[WeightNet] = None
        super().__init__(env, seed=seed, **options)

    @property
    def env_overrides(self) -> Dict[str, Any]:
        return {"granularity": "sample", "keep_feature_maps": True}

    def bind(self, env) -> "MMKD":
        if env.config.task != "classification":
            raise ConfigError(f"policy 'mmkd': its weighting network reads classification logits and its meta step "
                              f"their CE; the {env.config.task} task has no MMKD form here")
        super().bind(env)
        if env.dist.enabled:
            raise ValueError("policy 'mmkd' runs in one process: its meta step unrolls the student on one "
                             "device (launch without torchrun)")
        self.config.validate(env.batch_size)
        self.reset(self.seed)
        return self

    def reset(self, seed: int) -> None:
        """Fresh weight networks, optimiser and hard buffer, all from `seed`."""
        super().reset(seed)
        self.meta_steps = 0
        self.last_outer_loss = float("nan")
        self._seen = -1
        self._last = None
        if self.env is None:
            return
        eng, cfg = self.env.engine, self.config
        m, c, b = eng.num_teachers, eng.num_classes, self.env.batch_size
        with torch.random.fork_rng(devices=[eng.device] if eng.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            self.logit_net = WeightNet(c * (m + 1), m, cfg.factor).to(eng.device)
            self.feature_net = WeightNet(b * (m + 1), m, cfg.factor).to(eng.device)
        self.nets = nn.ModuleList([self.logit_net, self.feature_net])
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
        self.buffer = HardBuffer(cfg.buffer_size, np.random.default_rng([self.seed, 0x4D4B4D]))

    # --- weights ---------------------------------------------------------------------------
    def network_weights(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(w_logit, w_feat), each (B, M), from the networks (differentiable in their parameters).
        Without feature KD the feature weights are the logit weights (they weight nothing)."""
        w_logit = self.logit_net(logit_inputs(batch))
        if batch.feat_mse is None:
            return w_logit, w_logit
        return w_logit, self.feature_net(gram_rows(batch))

    def batch_weights(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.network_weights(batch)[0]

    def act(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Weights for the prepared batch; first the meta step that is due after the previous
        iteration, and the new batch goes into the hard buffer."""
        if self.env is None:
            raise RuntimeError("policy 'mmkd' is not bound to an env; call bind(env) first")
        eng = self.env.engine
        batch = eng.batch
        if batch is None:
            raise RuntimeError("the env has no prepared batch; call env.reset() first")
        done = eng.iteration
        if done < self._seen:  # the env started a new episode: MMKD starts afresh with its student
            self.reset(self.seed)
        if done != self._seen:
            if done > 0 and done % self.config.meta_freq == 0:
                self.meta_step()
            self._remember(batch)
            self._seen = done
        with torch.no_grad():
            w_logit, w_feat = self.network_weights(batch)
        return w_logit.cpu().numpy(), w_feat.cpu().numpy()

    def _remember(self, batch) -> None:
        if self.config.hard_buffer:
            self.buffer.add(batch.x, batch.y, batch.index, batch.student_correct)
        else:
            self._last = (batch.x, batch.y, batch.index)

    # --- meta step -------------------------------------------------------------------------
    def meta_batch(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.config.hard_buffer:
            return self.buffer.sample(self.env.batch_size)
        return self._last

    def outer_loss(self, x: torch.Tensor, y: torch.Tensor, index: Optional[torch.Tensor] = None,
                   create_graph: bool = True) -> torch.Tensor:
        """Student CE on (x, y) after the unrolled virtual steps from the live student: a function
        of the weight networks' parameters (second order when `create_graph`)."""
        eng, cfg = self.env.engine, self.env.config
        opt = eng.virtual_optimizer()
        for _ in range(self.config.virtual_steps):
            batch = eng.forward_with(x, y, opt.params, index)
            w_logit, w_feat = self.network_weights(batch)
            _, kd, feat = eng.loss_terms(batch, w_logit, w_feat)
            opt.step(cfg.kd_alpha * kd + cfg.feat_beta * feat, create_graph=create_graph)
        opt.step(eng.forward_with(x, y, opt.params, index).student_ce.mean(), create_graph=create_graph)
        return eng.forward_with(x, y, opt.params, index).student_ce.mean()

    def meta_gradient(self, x: torch.Tensor, y: torch.Tensor,
                      index: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(outer loss, its gradient w.r.t. each network parameter, in `nets.parameters()` order)."""
        params = list(self.nets.parameters())
        loss = self.outer_loss(x, y, index)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def meta_step(self) -> float:
        """One Adam step of the weight networks on the meta-gradient; returns the outer loss."""
        loss, grads = self.meta_gradient(*self.meta_batch())
        for p, g in zip(self.nets.parameters(), grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.meta_steps += 1
        self.last_outer_loss = float(loss)
        return self.last_outer_loss

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Networks, optimiser, hard buffer (with its RNG) and counters, to continue an episode."""
        return {"nets": self.nets.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer.state_dict(), "seen": self._seen, "last": self._last,
                "meta_steps": self.meta_steps, "last_outer_loss": self.last_outer_loss}

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["nets"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self._seen, self._last = int(state["seen"]), state["last"]
        self.meta_steps, self.last_outer_loss = int(state["meta_steps"]), float(state["last_outer_loss"])
