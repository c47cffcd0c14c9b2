"""The MTKD-RL agent (Yang et al., AAAI 2025) in two variants that share state features and network.

State (per sample i, per teacher m, in the official code's order; `env.sample_layout`):
`[cos_im, kl_im, ce_im, e_t^m_i (D_m), z_t^m_i (C)]`, concatenated over teachers: (B, F).

Network (`PolicyTrans`): `h = ReLU(W1 s)` (no bias, hidden 128), two heads with a softmax over
teachers, `piL, piF` (B, M), mixed with the priors
`qCE = (1 - softmax_m(ce)) / (M - 1)`, `qKL = softmax_m(kl)`, `qCOS = softmax_m(cos)`:
`wL = (piL + qCE + qKL) / 3`, `wF = (piF + qCE + qCOS) / 3`, or with learned mixing factors
(`dynamic`): `wL = softmax(a) . (piL, qCE, qKL)`, `wF = softmax(b) . (piF, qCE, qCOS)`, a, b
initialised to ones. With M = 1 the priors are all ones (the official formula is 0/0 there).

Variants:

* ``mtkd-rl`` ("code") -- what the official code does: deterministic weights; reward = the
  "paper" per-sample reward; every `agent_step` steps and at the end of every student epoch,
  one SGD step (lr 0.1) per buffered batch on the reward-weighted BCE of the weights against 1
  (`-(1/BM) sum_im r_i [log wL_im + log wF_im]`); equal weights until the first update. That
  update pushes the weights toward uniform (see `shared/reference/mtkd-rl-method.md`, section 4).
* ``mtkd-rl-pg`` ("pg") -- what the paper describes: the same network gives the mean of a
  Dirichlet policy per sample, `a ~ Dir(kappa * w)` for logit and feature weights (kappa a
  learned precision); actions are sampled while training and the update is REINFORCE with the
  batch-mean reward as baseline, `-(1/B) sum_i (r_i - mean r) [log p(aL_i) + log p(aF_i)]`.
  Evaluation uses the mean `w`.

Both follow SB3's model interface through `agents.online.OnlineAgent` (`learn`, `predict`, `save`,
`load`, `get_env`, `logger`), so the run, checkpoint and evaluation code treats every algorithm alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from mtkd_env.mdp.actions import weights_to_action
from mtkd_env.config import ConfigError

from .mtkd_rl_network import MTKDRLConfig, PolicyTrans, StateLayout
from .online import OnlineAgent

__all__ = ["MTKDRLConfig", "StateLayout", "PolicyTrans", "MTKDRL", "VARIANTS", "ENV_OVERRIDES",
           "weights_to_linear_action"]

VARIANTS: Tuple[str, ...] = ("code", "pg")
ENV_OVERRIDES = {"granularity": "sample", "separate_feature_weights": True, "action_transform": "linear"}
"""The env the agents need: per-sample state (B, F), separate logit/feature weights, and an
exactly invertible action transform so `predict`'s simplex weights are the weights applied."""


def weights_to_linear_action(w_logit: np.ndarray, w_feat: np.ndarray) -> np.ndarray:
    """The env action (B, 2M) whose "linear" transform gives back exactly these (B, M) weights."""
    return weights_to_action([w_logit, w_feat], "linear", 1.0)


def _sample_simplex(dist: torch.distributions.Dirichlet, floor: float = 1e-6) -> torch.Tensor:
    # float32 Dirichlet draws can underflow to exact zeros, whose log-density is -inf.
    a = dist.sample().clamp_min(floor)
    return a / a.sum(-1, keepdim=True)


class MTKDRL(OnlineAgent):
    """The MTKD-RL agent on a `MultiTeacherKDEnv` with sample granularity.

    `env` may be None for a model used only to `predict` (loaded) or to `update` hand-built
    batches (tests); then `layout` must be given. `seed` seeds the global python, numpy and torch
    RNGs as SB3 models do (None leaves them alone, as when loading).
    """

    def __init__(self, env: Any = None, variant: str = "code", config: Optional[MTKDRLConfig] = None,
                 seed: Optional[int] = 0, device: Union[str, torch.device] = "cpu",
                 layout: Optional[StateLayout] = None) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"MTKD-RL variant: expected one of {list(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.config = config = config or MTKDRLConfig()
        if config.max_concentration <= config.min_concentration:
            raise ConfigError(f"hyperparameter max_concentration: expected more than min_concentration "
                              f"({config.min_concentration}), got {config.max_concentration}")
        if env is not None:
            if env.config.granularity != "sample":
                raise ConfigError("MTKD-RL needs the per-sample state: env granularity must be 'sample', got "
                                  f"{env.config.granularity!r}")
            layout = StateLayout.from_env_layout(env.sample_layout)
        if layout is None:
            raise ValueError("MTKDRL needs an env or a StateLayout")
        self.layout = layout
        self.num_teachers = layout.num_teachers
        super().__init__(env, seed, device)
        self.net = PolicyTrans(layout, config.hidden_size, config.dynamic,
                               config.concentration if variant == "pg" else None,
                               config.learn_concentration).to(self.device)
        self.optimizer = torch.optim.SGD([p for p in self.net.parameters() if p.requires_grad], lr=config.lr,
                                         momentum=config.momentum)
        self._n_rounds = 0           # update events (the warm-up ends at the first)

    @property
    def warming_up(self) -> bool:
        return self.config.warmup and self._n_rounds == 0

    def _warmup_weights(self) -> np.ndarray:
        value = 1.0 if self.config.warmup_weight == "ones" else 1.0 / self.num_teachers
        return np.full(self.num_teachers, value, dtype=np.float32)

    # --- acting -----------------------------------------------------------------------------
    def weights(self, obs: np.ndarray, deterministic: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """Simplex weights (wL, wF), each (B, M), for a state (B, F): the mean or a Dirichlet sample."""
        state = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if deterministic or self.variant == "code":
                w_l, w_f = self.net(state)
            else:
                (d_l, d_f), _ = self.net.distributions(state, self.config.min_weight, self.config.min_concentration,
                                                       self.config.max_concentration)
                w_l, w_f = _sample_simplex(d_l), _sample_simplex(d_f)
        return w_l.cpu().numpy(), w_f.cpu().numpy()

    def predict(self, observation: np.ndarray, state: Optional[Any] = None, episode_start: Optional[np.ndarray] = None,
                deterministic: bool = True):
        """Env action (B, 2M) for a state (B, F), or (N, B, 2M) for (N, B, F). While the agent is
        still in its warm-up (no update yet) the action gives uniform weights."""
        obs = np.asarray(observation, dtype=np.float32)
        batched = obs.ndim == 3
        rows = obs if batched else obs[None]
        if rows.shape[-1] != self.layout.width:
            raise ValueError(f"observation has {rows.shape[-1]} features per sample; this agent expects "
                             f"{self.layout.width} (its teacher pool and dataset)")
        actions = []
        for row in rows:
            if self.warming_up:
                w = np.full((row.shape[0], self.num_teachers), 1.0 / self.num_teachers, dtype=np.float32)
                w_l = w_f = w
            else:
                w_l, w_f = self.weights(row, deterministic)
            actions.append(weights_to_linear_action(w_l, w_f))
        out = np.stack(actions)
        return (out if batched else out[0]), state

    # --- learning ---------------------------------------------------------------------------
    def _step(self, obs: np.ndarray):
        env = self.env
        batch_epoch = env.engine.loader.epoch  # the epoch of the prepared batch
        sampled = None
        if self.warming_up:
            w_l = w_f = self._warmup_weights()
        else:
            w_l, w_f = self.weights(obs, deterministic=self.variant == "code")
            sampled = (w_l, w_f) if self.variant == "pg" else None
        new_obs, reward, terminated, truncated, info = env.step_weights(w_l, w_f)
        reward_vector = info.get("reward_vector")
        if reward_vector is None:  # a scalar reward (not "paper"): every sample shares it
            reward_vector = np.full(obs.shape[0], reward, dtype=np.float32)
        item = {"state": torch.as_tensor(obs), "reward": torch.as_tensor(np.asarray(reward_vector, np.float32))}
        if self.variant == "code" or sampled is not None:
            if sampled is not None:
                item["a_logit"], item["a_feat"] = torch.as_tensor(sampled[0]), torch.as_tensor(sampled[1])
            self._buffer.append(item)
        epoch_end = terminated or truncated or env.engine.loader.epoch != batch_epoch
        self._steps_since_update += 1
        if self._steps_since_update >= self.config.agent_step or (self.config.update_at_epoch_end and epoch_end):
            self._train_round()
        return new_obs, reward, terminated, truncated, info

    def _train_round(self) -> None:
        stats = self.update(self._buffer) if self._buffer else {}
        self._buffer = []
        self._steps_since_update = 0
        self._n_rounds += 1
        for key, value in stats.items():
            self.logger.record(f"agent/{key}", value)
        self.logger.record("agent/n_updates", self._n_updates)

    def update(self, batches: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """One optimiser step per buffered batch, in order (as the official `train_agent`).

        Each batch: "state" (B, F), "reward" (B,); pg also "a_logit", "a_feat" (B, M) sampled weights.
        """
        self.net.train()
        losses = []
        for batch in batches:
            state = batch["state"].to(self.device, torch.float32)
            reward = batch["reward"].to(self.device, torch.float32)
            if self.variant == "code":
                w_l, w_f = self.net(state)
                weight = reward[:, None].expand_as(w_l)
                ones = torch.ones_like(w_l)
                # Mixtures can exceed 1 by a rounding error; BCE rejects inputs outside [0, 1].
                loss = (F.binary_cross_entropy(w_l.clamp(0.0, 1.0), ones, weight=weight)
                        + F.binary_cross_entropy(w_f.clamp(0.0, 1.0), ones, weight=weight))
            else:
                (d_l, d_f), _ = self.net.distributions(state, self.config.min_weight,
                                                       self.config.min_concentration, self.config.max_concentration)
                log_prob = d_l.log_prob(batch["a_logit"].to(self.device)) + d_f.log_prob(batch["a_feat"].to(self.device))
                advantage = reward - reward.mean()
                loss = -(advantage * log_prob).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._n_updates += 1
            losses.append(float(loss.detach()))
        stats = {"loss": float(np.mean(losses))}
        mix_l, mix_f = self.net.mixing()
        if self.net.dynamic:
            stats.update({f"mix_logit_{i}": float(v) for i, v in enumerate(mix_l.detach())})
            stats.update({f"mix_feat_{i}": float(v) for i, v in enumerate(mix_f.detach())})
        if self.variant == "pg":
            stats["concentration"] = float(self.net.precision(self.config.min_concentration,
                                                              self.config.max_concentration).detach())
        return stats

    # --- persistence ------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"variant": self.variant, "config": dataclasses.asdict(self.config), "layout": self.layout.to_dict(),
                "n_rounds": self._n_rounds}

    @classmethod
    def load(cls, path: Union[str, Path], env: Any = None, device: Union[str, torch.device] = "cpu") -> "MTKDRL":
        """Rebuild a saved agent (weights read with `weights_only=True`)."""
        meta, weights = cls.saved(path)
        config = MTKDRLConfig(**meta["config"])
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the caller's RNG alone
            model = cls(env, meta["variant"], config, seed=None, device=device,
                        layout=StateLayout.from_dict(meta["layout"]))
        model.net.load_state_dict(weights)
        model._n_rounds = int(meta.get("n_rounds", 1))
        return model

    def training_state(self) -> dict:
        """Everything (but the env and global RNGs) needed to continue `learn` bit-identically."""
        return {**self.base_training_state(), "n_rounds": self._n_rounds}

    def load_training_state(self, state: dict) -> None:
        self.load_base_training_state(state)
        self._n_rounds = int(state["n_rounds"])
