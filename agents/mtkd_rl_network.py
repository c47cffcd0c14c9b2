"""The MTKD-RL agent's network and its inputs: hyperparameters (`MTKDRLConfig`), where each
teacher's statistics sit in a state row (`StateLayout`), the official prior weights, and
`PolicyTrans` (state (B, F) -> logit and feature weights, each (B, M)). See `agents.mtkd_rl`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Dict, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from pydantic import Field

from mtkd_env.runtime.options import settings

__all__ = ["MTKDRLConfig", "StateLayout", "priors", "PolicyTrans"]


@settings(prefix="hyperparameter ")
class MTKDRLConfig:
    """Hyperparameters of the MTKD-RL agents (defaults: the official code)."""

    hidden_size: Annotated[int, Field(ge=1)] = 128
    """Width of the shared hidden layer."""
    dynamic: bool = False
    """Learn the mixing factors of network output and priors (official `--dynamic`)."""
    agent_step: Annotated[int, Field(ge=1)] = 1000
    """Update the agent after this many buffered env steps (official `--agent-step`)."""
    update_at_epoch_end: bool = True
    """Also update at the end of every student epoch (and episode), as the official code."""
    lr: Annotated[float, Field(gt=0)] = 0.1
    """SGD learning rate of the agent."""
    momentum: Annotated[float, Field(ge=0)] = 0.0
    """SGD momentum of the agent (official: none)."""
    warmup: bool = True
    """Use fixed warm-up weights until the first update (official: epoch 0)."""
    warmup_weight: Literal["uniform", "ones"] = "uniform"
    """Warm-up weights: "uniform" = 1/M each (our spec, the AVER scale) or "ones" = 1 each (the
    official code's epoch 0, M times the KD scale of later epochs)."""
    concentration: Annotated[float, Field(gt=0)] = 30.0
    """pg: initial Dirichlet precision kappa (larger = less exploration)."""
    learn_concentration: bool = True
    """pg: learn kappa with the policy gradient."""
    min_weight: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    """pg: floor of the Dirichlet mean, so every concentration stays positive."""
    min_concentration: Annotated[float, Field(gt=0)] = 1.0
    """pg: floor of the learned precision per teacher (kappa >= min_concentration * M). Without it a
    learned kappa can run to 0 (exp underflow: an invalid Dirichlet, seen on `specialists`); at the
    uniform mean every concentration then stays >= this floor."""
    max_concentration: Annotated[float, Field(gt=0)] = 1000.0
    """pg: ceiling of the learned precision per teacher (kappa <= max_concentration * M). REINFORCE
    can push kappa up with a gradient that grows with kappa: on `pools` log-kappa ran from 7 to 19 in
    four updates and the next update was NaN. At the ceiling the policy is all but deterministic (a
    weight's sd sqrt(w(1-w)/(kappa+1)) < 0.01 for M = 3)."""


@dataclass(frozen=True)
class StateLayout:
    """Where each teacher's cos, kl and ce sit in a state row of width `width`."""

    num_teachers: int
    width: int
    cos: Tuple[int, ...]
    kl: Tuple[int, ...]
    ce: Tuple[int, ...]

    @classmethod
    def from_env_layout(cls, layout: Sequence[Tuple[int, str, slice]]) -> "StateLayout":
        """From `MultiTeacherKDEnv.sample_layout`: (teacher, quantity, column slice) blocks."""
        cols: Dict[str, Dict[int, int]] = {"cos": {}, "kl": {}, "ce": {}}
        for m, name, sl in layout:
            if name in cols:
                cols[name][m] = sl.start
        m = len(cols["ce"])
        if m == 0 or any(len(c) != m for c in cols.values()):
            raise ValueError("sample layout must give cos, kl and ce columns for every teacher")
        width = max(sl.stop for _, _, sl in layout)
        return cls(m, width, *(tuple(cols[k][i] for i in range(m)) for k in ("cos", "kl", "ce")))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StateLayout":
        return cls(int(data["num_teachers"]), int(data["width"]), tuple(data["cos"]), tuple(data["kl"]),
                   tuple(data["ce"]))


def priors(ce: torch.Tensor, kl: torch.Tensor, cos: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The official prior weights, each (B, M) on the simplex: low-CE, large-KL, high-cos teachers.
    M = 1 gives ones (the official `(1 - softmax(ce)) / (M - 1)` is 0/0 there)."""
    m = ce.shape[-1]
    if m == 1:
        one = torch.ones_like(ce)
        return one, one, one
    q_ce = (1.0 - F.softmax(ce, dim=-1)) / (m - 1)
    return q_ce, F.softmax(kl, dim=-1), F.softmax(cos, dim=-1)


class PolicyTrans(nn.Module):
    """The official agent network plus prior mixing: state (B, F) -> (wL, wF), each (B, M)."""

    def __init__(self, layout: StateLayout, hidden_size: int = 128, dynamic: bool = False,
                 concentration: Optional[float] = None, learn_concentration: bool = True) -> None:
        super().__init__()
        m = layout.num_teachers
        self.layout = layout
        self.embed = nn.Linear(layout.width, hidden_size, bias=False)
        self.logit_head = nn.Linear(hidden_size, m)
        self.feature_head = nn.Linear(hidden_size, m)
        self.dynamic = dynamic
        if dynamic:
            self.logit_mix = nn.Parameter(torch.ones(3))
            self.feature_mix = nn.Parameter(torch.ones(3))
        for name in ("cos", "kl", "ce"):
            self.register_buffer(f"{name}_idx", torch.tensor(getattr(layout, name), dtype=torch.long),
                                 persistent=False)
        self.log_concentration: Optional[nn.Parameter] = None
        if concentration is not None:
            self.log_concentration = nn.Parameter(torch.tensor(float(np.log(concentration))),
                                                  requires_grad=learn_concentration)

    def mixing(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mixing factors (3,) for (network, CE prior, gap prior) of the logit and feature weights."""
        if self.dynamic:
            return F.softmax(self.logit_mix, dim=0), F.softmax(self.feature_mix, dim=0)
        third = torch.full((3,), 1.0 / 3.0, device=self.embed.weight.device)
        return third, third

    def forward(self, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`state` (B, F) -> logit weights (B, M) and feature weights (B, M), rows on the simplex."""
        h = F.relu(self.embed(state))
        pi_l = F.softmax(self.logit_head(h), dim=-1)
        pi_f = F.softmax(self.feature_head(h), dim=-1)
        q_ce, q_kl, q_cos = priors(state[:, self.ce_idx], state[:, self.kl_idx], state[:, self.cos_idx])
        mix_l, mix_f = self.mixing()
        w_l = mix_l[0] * pi_l + mix_l[1] * q_ce + mix_l[2] * q_kl
        w_f = mix_f[0] * pi_f + mix_f[1] * q_ce + mix_f[2] * q_cos
        return w_l, w_f

    @property
    def concentration(self) -> torch.Tensor:
        if self.log_concentration is None:
            raise RuntimeError("this network has no Dirichlet precision (variant 'code')")
        return self.log_concentration.exp()

    def precision(self, min_concentration: float = 1.0, max_concentration: float = 1000.0) -> torch.Tensor:
        """pg: the precision the policy uses, `min_concentration` * M <= kappa <= `max_concentration` * M."""
        m = self.layout.num_teachers
        return self.concentration.clamp(min_concentration * m, max_concentration * m)

    def distributions(self, state: torch.Tensor, min_weight: float = 1e-4, min_concentration: float = 1.0,
                      max_concentration: float = 1000.0):
        """pg: Dirichlet policies over logit and feature weights, each with mean ~= (wL, wF) and
        precision `precision(min_concentration, max_concentration)`."""
        w_l, w_f = self(state)
        kappa = self.precision(min_concentration, max_concentration)
        dist = torch.distributions.Dirichlet
        return (dist(kappa * w_l.clamp_min(min_weight)), dist(kappa * w_f.clamp_min(min_weight))), (w_l, w_f)
