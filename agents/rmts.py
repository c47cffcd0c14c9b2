"""Reinforced Multi-Teacher Selection (Yuan et al., AAAI 2021, arXiv 2012.06048) on the env.

Per sample i and teacher m a Bernoulli policy decides whether teacher m teaches sample i:

    s_im = [e_s(i) (D_s), softmax(z_t^m(i) / T) (C), CE(z_t^m(i), y_i) (1)]
    p_im = sigmoid(W . s_im + b)          W, b shared by all teachers
    a_im ~ Bernoulli(p_im)

— the student's representation (its pooled embedding), the teacher's soft prediction and the
teacher's loss, as the paper's state. The env (`action_transform="select"`) distils sample i from
its selected teachers with equal shares (1 / #selected, so selecting all = AVER); a sample with no
teacher selected is trained on its label alone (CE only): our documented choice, since the paper's
handling is not verified here (`shared/reference/kd-baselines.md`, section 1.6).

Learning: REINFORCE with a baseline. The reward is the env's: by default (an env config without a
`reward`) "probe_loss_drop", the decrease of the student's CE on a fixed held-out probe batch over
the step (a student-loss reward that, unlike the training loss, cannot be raised by simply
selecting no teacher); `reward="val_acc_delta"` gives the accuracy reward. A per-sample reward
vector ("paper") is used per sample. Every `update_every` steps:

    loss = -(1 / (B M)) sum_t sum_i sum_m (r_ti - baseline_t) log pi(a_tim | s_tim)
    baseline <- decay * baseline + (1 - decay) * mean_i r_ti      (after each buffered step)

W and b start at 0 (every p = 1/2). Evaluation is greedy: teacher selected iff p >= 1/2, so an
untrained agent is AVER. The paper is NLP (BERT teachers); details beyond the above are ours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from pydantic import Field

from mtkd_env.config import ConfigError
from mtkd_env.runtime.options import settings

from .online import OnlineAgent

__all__ = ["RMTSConfig", "SelectionLayout", "SelectionPolicy", "RMTS", "ENV_OVERRIDES"]

ENV_OVERRIDES = {"granularity": "sample", "separate_feature_weights": False, "action_transform": "select",
                 "sample_obs_student": True, "sample_obs_embeddings": False, "sample_obs_logits": True}
"""Per-sample state with the student's embedding and the teachers' logits; actions select teachers."""


@settings(prefix="hyperparameter ")
class RMTSConfig:
    """Hyperparameters of Reinforced Multi-Teacher Selection (our choices: the paper's are not verified)."""

    lr: Annotated[float, Field(gt=0)] = 0.01
    """Learning rate of the policy's optimiser."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """"adam" or "sgd" (plain)."""
    update_every: Annotated[int, Field(ge=1)] = 1
    """Env steps between policy updates (one optimiser step over the buffered steps)."""
    baseline_decay: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """Decay of the exponential moving average of rewards that is the REINFORCE baseline."""
    temperature: Annotated[float, Field(gt=0)] = 1.0
    """Temperature of the teacher's soft prediction softmax(z_t / T) in the state."""
    init_bias: float = 0.0
    """Initial b (W starts at 0): every selection probability starts at sigmoid(init_bias)."""


@dataclass(frozen=True)
class SelectionLayout:
    """Where the student embedding and each teacher's logits and CE sit in a state row."""

    num_teachers: int
    width: int
    student: Tuple[int, int]       # [start, stop) of the student embedding
    logits: Tuple[Tuple[int, int], ...]
    ce: Tuple[int, ...]

    @classmethod
    def from_env_layout(cls, layout: Sequence[Tuple[int, str, slice]]) -> "SelectionLayout":
        """From `MultiTeacherKDEnv.sample_layout` (needs the student embedding and the logits blocks)."""
        blocks = {(m, name): (sl.start, sl.stop) for m, name, sl in layout}
        m = sum(1 for (_, name) in blocks if name == "ce")
        if (-1, "student_embedding") not in blocks or any((i, "logits") not in blocks for i in range(m)):
            raise ConfigError("rmts needs the student embedding and the teachers' logits in the state: build the env "
                              f"with {ENV_OVERRIDES}")
        return cls(m, max(sl.stop for _, _, sl in layout), blocks[(-1, "student_embedding")],
                   tuple(blocks[(i, "logits")] for i in range(m)), tuple(blocks[(i, "ce")][0] for i in range(m)))

    @property
    def state_width(self) -> int:
        """Width of one (sample, teacher) state s_im: D_s + C + 1."""
        return self.student[1] - self.student[0] + self.logits[0][1] - self.logits[0][0] + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionLayout":
        return cls(int(d["num_teachers"]), int(d["width"]), tuple(d["student"]), tuple(tuple(x) for x in d["logits"]),
                   tuple(d["ce"]))


class SelectionPolicy(nn.Module):
    """state rows (B, F) -> selection probabilities (B, M) = sigmoid(W . s_im + b)."""

    def __init__(self, layout: SelectionLayout, temperature: float = 1.0, init_bias: float = 0.0) -> None:
        super().__init__()
        self.layout, self.temperature = layout, float(temperature)
        self.linear = nn.Linear(layout.state_width, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.fill_(init_bias)

    def states(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, M, D_s + C + 1) per-teacher states s_im."""
        lay = self.layout
        student = obs[:, lay.student[0]:lay.student[1]]
        rows = [torch.cat([student, F.softmax(obs[:, a:b] / self.temperature, dim=-1), obs[:, c:c + 1]], dim=1)
                for (a, b), c in zip(lay.logits, lay.ce)]
        return torch.stack(rows, dim=1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.states(obs)).squeeze(-1))


class RMTS(OnlineAgent):
    """The selection agent on a `MultiTeacherKDEnv` built with `ENV_OVERRIDES`.

    `env` may be None for a model used only to `predict` (loaded) or to `update` hand-built
    batches (tests); then `layout` must be given. `seed` seeds the global RNGs as SB3 models do.
    """

    def __init__(self, env: Any = None, config: Optional[RMTSConfig] = None, seed: Optional[int] = 0,
                 device: Union[str, torch.device] = "cpu", layout: Optional[SelectionLayout] = None) -> None:
        self.config = config = config or RMTSConfig()
        if env is not None:
            wrong = {k: getattr(env.config, k) for k, v in ENV_OVERRIDES.items() if getattr(env.config, k) != v}
            if wrong:
                raise ConfigError(f"rmts needs an env with {ENV_OVERRIDES}; this one has {wrong}")
            layout = SelectionLayout.from_env_layout(env.sample_layout)
        if layout is None:
            raise ValueError("RMTS needs an env or a SelectionLayout")
        self.layout = layout
        self.num_teachers = layout.num_teachers
        super().__init__(env, seed, device)
        self.net = SelectionPolicy(layout, config.temperature, config.init_bias).to(self.device)
        opt = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
        self.optimizer = opt(self.net.parameters(), lr=config.lr)
        self._baseline: Optional[float] = None

    # --- acting -----------------------------------------------------------------------------
    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        """(B, M) selection probabilities for a state (B, F)."""
        with torch.no_grad():
            return self.net(self._tensor(obs)).cpu().numpy()

    def _tensor(self, obs) -> torch.Tensor:
        obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        if obs.shape[-1] != self.layout.width:
            raise ValueError(f"observation has {obs.shape[-1]} features per sample; this agent expects "
                             f"{self.layout.width} (its teacher pool, student and dataset)")
        return obs

    def predict(self, observation: np.ndarray, state: Optional[Any] = None, episode_start: Optional[np.ndarray] = None,
                deterministic: bool = True):
        """Env action (B, M) for a state (B, F) (or (N, B, M) for (N, B, F)): +1 selects a teacher,
        -1 does not; greedy (p >= 1/2) when `deterministic`, else sampled."""
        obs = np.asarray(observation, dtype=np.float32)
        rows = obs if obs.ndim == 3 else obs[None]
        actions = []
        for row in rows:
            with torch.no_grad():
                p = self.net(self._tensor(row))
                a = (p >= 0.5).float() if deterministic else torch.bernoulli(p)
            actions.append((2.0 * a - 1.0).cpu().numpy())
        out = np.stack(actions).astype(np.float32)
        return (out if obs.ndim == 3 else out[0]), state

    # --- learning ---------------------------------------------------------------------------
    def _step(self, obs: np.ndarray):
        state = self._tensor(obs)
        with torch.no_grad():
            selected = torch.bernoulli(self.net(state))                           # (B, M), global torch RNG
        new_obs, reward, terminated, truncated, info = self.env.step((2.0 * selected - 1.0).cpu().numpy())
        vector = info.get("reward_vector")
        reward_vector = np.full(len(obs), reward, np.float32) if vector is None else np.asarray(vector, np.float32)
        self._buffer.append({"state": state.cpu(), "selected": selected.cpu(), "reward": torch.as_tensor(reward_vector)})
        self._steps_since_update += 1
        if self._steps_since_update >= self.config.update_every:
            stats = self.update(self._buffer)
            self._buffer, self._steps_since_update = [], 0
            for key, value in stats.items():
                self.logger.record(f"agent/{key}", value)
        return new_obs, reward, terminated, truncated, info

    def reinforce_loss(self, batches: Sequence[Dict[str, torch.Tensor]]) -> Tuple[torch.Tensor, List[float]]:
        """The REINFORCE loss of buffered steps ("state" (B, F), "selected" (B, M) 0/1, "reward"
        (B,)) and the baselines used for them; advances the running baseline."""
        terms, baselines = [], []
        for batch in batches:
            reward = batch["reward"].to(self.device, torch.float32)
            if self._baseline is None:  # the first reward is its own baseline: no signal before a reference
                self._baseline = float(reward.mean())
            baselines.append(self._baseline)
            p = self.net(batch["state"].to(self.device, torch.float32)).clamp(1e-6, 1 - 1e-6)
            a = batch["selected"].to(self.device, torch.float32)
            log_prob = a * torch.log(p) + (1 - a) * torch.log1p(-p)                 # (B, M)
            terms.append(-((reward - self._baseline)[:, None] * log_prob).mean())
            decay = self.config.baseline_decay
            self._baseline = decay * self._baseline + (1 - decay) * float(reward.mean())
        return torch.stack(terms).mean(), baselines

    def update(self, batches: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """One optimiser step on the REINFORCE loss of `batches`; returns statistics to log."""
        loss, baselines = self.reinforce_loss(batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._n_updates += 1
        selected = torch.cat([b["selected"] for b in batches]).float()
        stats = {"loss": float(loss.detach()), "baseline": baselines[-1], "n_updates": self._n_updates,
                 "none_selected": float((selected.sum(1) == 0).float().mean())}
        stats.update({f"selected/{m}": float(v) for m, v in enumerate(selected.mean(0))})
        return stats

    # --- persistence ------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "layout": self.layout.to_dict()}

    @classmethod
    def load(cls, path: Union[str, Path], env: Any = None, device: Union[str, torch.device] = "cpu") -> "RMTS":
        """Rebuild a saved agent (weights read with `weights_only=True`)."""
        meta, weights = cls.saved(path)
        with torch.random.fork_rng(devices=[]):
            model = cls(env, RMTSConfig(**meta["config"]), seed=None, device=device,
                        layout=SelectionLayout.from_dict(meta["layout"]))
        model.net.load_state_dict(weights)
        return model

    def training_state(self) -> dict:
        """Everything (but the env and global RNGs) needed to continue `learn` bit-identically."""
        return {**self.base_training_state(), "baseline": self._baseline}

    def load_training_state(self, state: dict) -> None:
        self.load_base_training_state(state)
        self._baseline = state["baseline"]
