"""`OnlineAgent`: what the project's own agents (MTKD-RL, Reinforced Multi-Teacher Selection) share.

They learn from the env step by step, without SB3, but follow SB3's model interface (`learn`,
`predict`, `save`, `get_env`, `logger`, `set_logger`) and call SB3 callbacks, so the run,
checkpoint and evaluation code treats every algorithm alike. Each env step is a safe point:
`callback.on_rollout_start()` fires before it, when the agent's state is complete.

A subclass provides `_step(obs)` (choose weights or an action, step the env, buffer what it
learns from and update when due), sets `net` and `optimizer`, and adds its own `training_state`
entries to `base_training_state` (network, optimiser, buffer and counters); `learn` does the rest.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["OnlineAgent"]


class OnlineAgent:
    """Base class. Subclasses set `self.net` (the module that `save` stores) and `self.optimizer`
    (its optimiser) before use."""

    net: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, env: Any, seed: Optional[int], device: Union[str, torch.device]) -> None:
        self.env = env
        self.seed = seed
        self.device = torch.device(device)
        if seed is not None:  # as SB3 models do: the global python, numpy and torch RNGs
            from stable_baselines3.common.utils import set_random_seed

            set_random_seed(seed)
        self.num_timesteps = 0
        self._episode_num = 0
        self._last_obs: Optional[np.ndarray] = None
        self._reset_seed: Optional[int] = seed
        self._logger = None
        self._buffer: List[Dict[str, torch.Tensor]] = []
        """What the agent learns from at its next update (one dict of tensors per env step)."""
        self._n_updates = 0           # optimiser steps
        self._steps_since_update = 0

    # --- SB3-style plumbing -----------------------------------------------------------------
    def get_env(self) -> Any:
        return self.env

    @property
    def logger(self):
        if self._logger is None:
            from stable_baselines3.common.logger import Logger

            self._logger = Logger(folder=None, output_formats=[])  # records are dropped until a logger is set
        return self._logger

    def set_logger(self, logger) -> None:
        self._logger = logger

    def _init_callback(self, callback):
        from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback

        if isinstance(callback, list):
            callback = CallbackList(callback)
        elif callback is None:
            callback = CallbackList([])
        elif not isinstance(callback, BaseCallback):
            callback = ConvertCallback(callback)
        callback.init_callback(self)
        return callback

    # --- learning ---------------------------------------------------------------------------
    def _step(self, obs: np.ndarray) -> Tuple[np.ndarray, float, bool, bool, dict]:
        """One env step from observation `obs`, with whatever the agent learns from it; returns
        the env's (obs, reward, terminated, truncated, info)."""
        raise NotImplementedError

    def learn(self, total_timesteps: int, callback: Any = None, log_interval: int = 1,
              reset_num_timesteps: bool = True, progress_bar: bool = False) -> "OnlineAgent":
        """Run `total_timesteps` env steps (distillation iterations), learning as the agent does."""
        env = self.env
        if env is None:
            raise RuntimeError(f"this {type(self).__name__} model has no env; pass one to the constructor or to load()")
        if reset_num_timesteps:
            self.num_timesteps, self._episode_num = 0, 0
        else:
            total_timesteps += self.num_timesteps
        callback = self._init_callback(callback)
        if reset_num_timesteps or self._last_obs is None:
            self._last_obs, _ = env.reset(seed=self._reset_seed)
            self._reset_seed = None  # as SB3's VecEnv.seed: only the first reset is seeded
        callback.on_training_start(locals(), globals())
        while self.num_timesteps < total_timesteps:
            callback.on_rollout_start()
            new_obs, reward, terminated, truncated, info = self._step(self._last_obs)
            self.num_timesteps += 1
            done = bool(terminated or truncated)
            if done:
                self._episode_num += 1
                new_obs, _ = env.reset()
            self._last_obs = new_obs
            # The step's bookkeeping is complete, so a callback that stops training leaves a
            # consistent state behind.
            rewards, dones, infos = np.array([reward]), np.array([done]), [info]
            callback.update_locals(locals())
            if not callback.on_step():
                break
        callback.on_training_end()
        return self

    # --- persistence ------------------------------------------------------------------------
    def _meta(self) -> dict:
        """What `load` needs besides the weights (JSON-able)."""
        raise NotImplementedError

    def save(self, path: Union[str, Path], meta: Optional[dict] = None) -> None:
        """Write a zip with `mtkd_meta.json` (`meta` plus the agent's own under "agent") and `agent.pth`."""
        from mtkd_env.runtime.files import atomic_path

        from .modelfile import META_NAME

        full = dict(meta or {})
        full["agent"] = self._meta()
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.net.state_dict().items()}, buf)
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w") as archive:
                archive.writestr(META_NAME, json.dumps(full, indent=1, sort_keys=True))
                archive.writestr("agent.pth", buf.getvalue())

    @staticmethod
    def saved(path: Union[str, Path]) -> Tuple[dict, dict]:
        """(the agent's meta, its network state dict) from a zip written by `save` (weights only)."""
        from .modelfile import read_meta, read_torch_member

        return read_meta(path)["agent"], read_torch_member(path, "agent.pth")

    def base_training_state(self) -> dict:
        """What every online agent continues from: network, optimiser, buffer and counters
        (subclasses add theirs)."""
        return {"net": self.net.state_dict(), "num_timesteps": self.num_timesteps, "episode_num": self._episode_num,
                "reset_seed": self._reset_seed,
                "last_obs": None if self._last_obs is None else torch.as_tensor(self._last_obs),
                "optimizer": self.optimizer.state_dict(), "buffer": [dict(b) for b in self._buffer],
                "n_updates": self._n_updates, "steps_since_update": self._steps_since_update}

    def load_base_training_state(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.num_timesteps, self._episode_num = int(state["num_timesteps"]), int(state["episode_num"])
        self._reset_seed = state["reset_seed"]
        self._last_obs = None if state["last_obs"] is None else state["last_obs"].numpy()
        self.optimizer.load_state_dict(state["optimizer"])
        self._buffer = [dict(b) for b in state["buffer"]]
        self._n_updates, self._steps_since_update = int(state["n_updates"]), int(state["steps_since_update"])
