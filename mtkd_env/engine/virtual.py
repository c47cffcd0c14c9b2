"""Virtual steps of the student: a functional forward and a differentiable optimiser step.

Meta-learned weightings (MMKD) take a few "virtual" SGD steps of the student on a weighted loss,
measure the result and back-propagate through those steps into the weighting network. The engine
exposes what that needs without a second copy of the distillation step:

    opt = engine.virtual_optimizer()                    # starts at the live parameters and momentum
    batch = engine.forward_with(x, y, opt.params)       # the engine's Batch, a function of opt.params
    total, kd, feat = engine.loss_terms(batch, w_logit, w_feat)
    opt.step(cfg.kd_alpha * kd + cfg.feat_beta * feat)  # params' = params - lr * (...), differentiable
    outer = engine.forward_with(x, y, opt.params).student_ce.mean()
    torch.autograd.grad(outer, weight_net.parameters())  # second order, through both steps

Nothing real changes: the engine's modules, optimiser and BatchNorm running statistics are as they
were, so there is nothing to roll back.

`kd_credit()` uses the same pieces for a per-(sample, teacher) credit of the prepared batch's KD
terms (the `kd_credit` / `kd_label_credit` rewards): how much of the probe loss, or of the sample's
own CE, each term would remove, to first order.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn


__all__ = ["VirtualSGD", "VirtualSteps"]


class VirtualSGD:
    """A differentiable SGD step with torch's update rule (`torch.optim.SGD`, dampening included):

        d   = g + weight_decay * p
        buf = d (first step) or momentum * buf + (1 - dampening) * d
        d   = d + momentum * buf (Nesterov) or buf
        p'  = p - lr * d

    `params` (name -> tensor requiring grad) and `momentum_buffers` (name -> tensor or None) are
    replaced by new tensors at every `step`, which keep the graph to the earlier ones, so a loss at
    the final parameters can be differentiated through every step. Parameters the loss does not
    reach are left alone (as torch's SGD skips parameters without a gradient).
    """

    def __init__(self, params: Mapping[str, torch.Tensor], momentum_buffers: Mapping[str, Optional[torch.Tensor]],
                 lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 dampening: float = 0.0) -> None:
        self.params: Dict[str, torch.Tensor] = dict(params)
        self.momentum_buffers: Dict[str, Optional[torch.Tensor]] = {k: momentum_buffers.get(k) for k in params}
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.nesterov, self.dampening = bool(nesterov), float(dampening)
        self.steps = 0

    def step(self, loss: torch.Tensor, create_graph: bool = True) -> Dict[str, torch.Tensor]:
        """Take one step on `loss` (a scalar function of `params`); returns the new `params`.
        `create_graph=False` gives a first-order step (no gradient through the update's gradient)."""
        names = list(self.params)
        grads = torch.autograd.grad(loss, [self.params[n] for n in names], create_graph=create_graph,
                                    allow_unused=True)
        new: Dict[str, torch.Tensor] = {}
        for name, g in zip(names, grads):
            p = self.params[name]
            if g is None:
                new[name] = p
                continue
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                buf = self.momentum_buffers[name]
                buf = d if buf is None else self.momentum * buf + (1.0 - self.dampening) * d
                self.momentum_buffers[name] = buf
                d = d + self.momentum * buf if self.nesterov else buf
            new[name] = p - self.lr * d
        self.params = new
        self.steps += 1
        return new


class VirtualSteps:
    """Mixin of `DistillationEngine`: the virtual-step API (see the module docstring).

    It relies on the engine's `student`, `projectors`, `optimizer`, its teacher side
    (`teacher_side`) and its private helpers for input format and autocast."""

    student: Optional[nn.Module]
    projectors: Optional[nn.Module]
    optimizer: Optional[torch.optim.Optimizer]

    def trainable_parameters(self) -> Dict[str, torch.Tensor]:
        """The parameters the optimiser updates, by name: "student.<name>" and "projectors.<name>"
        (the live tensors; `forward_with` and `virtual_optimizer` use these names)."""
        if self.student is None:
            raise RuntimeError("call reset() before trainable_parameters(): there is no student yet")
        out = {f"student.{k}": v for k, v in self.student.named_parameters()}
        if self.projectors is not None:
            out.update({f"projectors.{k}": v for k, v in self.projectors.named_parameters()})
        return out

    def forward_with(self, x: torch.Tensor, y: torch.Tensor, params: Mapping[str, torch.Tensor],
                     index: Optional[torch.Tensor] = None) -> Any:
        """The `mtkd_env.engine.Batch` of `prepare()` for inputs x (B, ...) and labels y (B,), with
        the student and projectors evaluated under `params` (names as `trainable_parameters()`;
        missing names use the live parameters) through `torch.func.functional_call`.

        Gradients flow into `params`, so `loss_terms` on the result is a differentiable function of
        them (e.g. for `VirtualSGD.step`). Nothing real changes: the modules' parameters stay as
        they are and train-mode BatchNorm updates running statistics on copies of the buffers.
        Teacher outputs are computed as in `prepare()` (no grad; from the teacher-output cache
        when `index`, the samples' dataset indices, is given and the cache is on). The feature
        maps are always kept (detached) in the result.
        """
        from torch.func import functional_call

        if self.student is None:
            raise RuntimeError("call reset() before forward_with(): there is no student yet")
        x = self._format(x)
        t_outs, teacher = self.teacher_side(x, y, index)

        def state(prefix: str, module: nn.Module) -> Dict[str, torch.Tensor]:
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            return {**{k: b.clone() for k, b in module.named_buffers()}, **own}

        with self._autocast():
            s_out = functional_call(self.student, state("student.", self.student), (x,))
            projected = None if self.projectors is None else functional_call(
                self.projectors, state("projectors.", self.projectors), (s_out.feature_map,))
        return self.task.measure(x, y, index, t_outs, teacher, s_out, projected, self.config.kd_temperature, True,
                                 self._with_cos)

    def kd_credit(self, target: str = "probe") -> torch.Tensor:
        """First-order credit of every logit-KD term kl[i, m] of the prepared batch, (B, M), detached.

        target "label": the drop of sample i's own CE that a step on kl[i, m] causes in logit space,
        c[i, m] = <∇_z kl[i, m], ∇_z CE(z_i, y_i)> = T·(softmax(z_i/T) − p_t^m)·(softmax(z_i) − onehot(y_i)):
        > 0 when teacher m pulls sample i's logits the way its label does (classification only; no
        extra forward). It is local: it credits agreement with the training label, not generalisation.

        target "probe" (default), for the probe loss:

            c[i, m] = kl[i, m](θ) − kl[i, m](θ − lr · ∇L_probe(θ))  ≈  lr · <∇L_probe, ∇kl[i, m]>,

        with kl[i, m] = T²·KL(p_t^m ‖ p_s) of sample i (`Batch.kl`), L_probe the task's supervised
        loss of the student on the probe batch (eval mode, as the `probe_loss` measurement) and lr the
        current learning rate. By the symmetry of the inner product, c[i, m] is also, to first order,
        the drop of the probe loss that one SGD step on kl[i, m] alone would cause, so
        `kd_alpha / B · Σ w[i, m] c[i, m]` is the probe-loss drop due to the batch's logit-KD term
        under weights w (B, M). Momentum and the feature term are left out. Costs one probe forward
        and backward and one batch forward (`forward_with`, whose teacher side is a cache gather when
        the teacher-output cache is on, else the teachers' forwards again); changes nothing real (parameters, gradients, BatchNorm
        statistics). Call after `prepare()` (or `reset`/`advance`), before `apply`.
        """
        from torch.func import functional_call

        if self.student is None or self.optimizer is None:
            raise RuntimeError("call reset() before kd_credit(): there is no student yet")
        batch = self.batch
        if target == "label":
            if self.task.dense:
                raise ValueError("kd_credit(target='label') is for classification (one label per image)")
            temp = self.config.kd_temperature
            z = batch.student_logits.detach().float()
            pull = torch.softmax(z / temp, 1)[None] - torch.softmax(batch.teacher_logits.float() / temp, 2)  # (M, B, C)
            label = torch.softmax(z, 1) - torch.nn.functional.one_hot(batch.y, z.shape[1]).to(z.dtype)
            return (temp * pull * label[None]).sum(2).T.contiguous()
        if target != "probe":
            raise ValueError(f"kd_credit: target must be 'probe' or 'label', got {target!r}")
        params = {k: p.detach().requires_grad_(True) for k, p in self.student.named_parameters()}
        buffers = {k: b.clone() for k, b in self.student.named_buffers()}
        was_training = self.student.training
        self.student.eval()
        try:
            with self._autocast():
                out = functional_call(self.student, (params, buffers), (self._format(self.probe_x),))
                probe = self.task.supervised_loss(out, self.probe_y)
        finally:
            self.student.train(was_training)
        names = list(params)
        grads = torch.autograd.grad(probe, [params[n] for n in names], allow_unused=True)
        lr = self.optimizer.param_groups[0]["lr"]
        shifted = {f"student.{n}": (params[n] if g is None else params[n] - lr * g).detach()
                   for n, g in zip(names, grads)}
        with torch.no_grad():
            after = self.forward_with(batch.x, batch.y, shifted, batch.index).kl
        return (batch.kl.detach() - after).float()

    def virtual_optimizer(self) -> VirtualSGD:
        """A differentiable copy of the next optimiser step: SGD with the current learning rate,
        momentum, Nesterov and weight decay, starting from the live parameters (detached copies
        that require grad, named as `trainable_parameters()`) and the optimiser's momentum
        buffers. Steps on it never change the engine's student, projectors or optimiser."""
        if self.optimizer is None:
            raise RuntimeError("call reset() before virtual_optimizer(): there is no optimiser yet")
        group = self.optimizer.param_groups[0]
        live = self.trainable_parameters()
        buffers = {name: self.optimizer.state.get(p, {}).get("momentum_buffer") for name, p in live.items()}
        return VirtualSGD({name: p.detach().requires_grad_(True) for name, p in live.items()},
                          {k: None if v is None else v.detach() for k, v in buffers.items()},
                          lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                          nesterov=group["nesterov"], dampening=group["dampening"])

