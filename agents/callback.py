"""The SB3 callback of a training run: per-step and per-episode metrics, the progress bar, and the
safe points at which the run checkpoints."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["RunCallback"]


class RunCallback(BaseCallback):
    """Logs every step and episode, drives the progress bar and checkpoints at safe points.

    With several envs, `step/*` and `weight/*` are means over the sub-envs and every finished
    episode is a row of its own (`episode/env` says which sub-env ran it)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run
        self.episodes = 0
        self.ep_return: Optional[np.ndarray] = None       # (n_envs,) per sub-env, for its running episode
        self.ep_steps: Optional[np.ndarray] = None        # (n_envs,)
        self.ep_weight_logit: Optional[np.ndarray] = None  # (n_envs, M) sums over the episode's steps
        self.ep_weight_feat: Optional[np.ndarray] = None
        self.last_test_acc = float("nan")
        self.bar = None

    def state_dict(self) -> dict:
        t = lambda a: None if a is None else torch.from_numpy(np.array(a, copy=True))  # noqa: E731
        return {"episodes": self.episodes, "ep_return": t(self.ep_return), "ep_steps": t(self.ep_steps),
                "ep_weight_logit": t(self.ep_weight_logit), "ep_weight_feat": t(self.ep_weight_feat),
                "last_test_acc": self.last_test_acc}

    def load_state_dict(self, state: dict) -> None:
        def n(a, ndim: int):  # checkpoints of one env kept scalars and (M,) sums
            if a is None:
                return None
            a = a.numpy().copy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
            return a.reshape((1,) * (ndim - a.ndim) + a.shape)

        self.episodes, self.last_test_acc = int(state["episodes"]), float(state["last_test_acc"])
        self.ep_return, self.ep_steps = n(state["ep_return"], 1), n(state["ep_steps"], 1)
        self.ep_weight_logit, self.ep_weight_feat = n(state["ep_weight_logit"], 2), n(state["ep_weight_feat"], 2)
        if self.ep_steps is not None:
            self.ep_steps = self.ep_steps.astype(np.int64)

    def _on_training_start(self) -> None:
        if self.run.settings.show_progress and self.run.dist.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.run.settings.total_timesteps, initial=self.model.num_timesteps,
                            desc=self.run.settings.algo, unit="step", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        self.run.safe_point()

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], np.asarray(self.locals["dones"], dtype=bool).reshape(-1)
        rewards = self.run.agent.raw_rewards(self.locals)
        names, k_envs = self.run.teacher_keys, len(infos)
        m = len(names)
        w_l = np.stack([np.asarray(i["weights_logit"], dtype=np.float64).reshape(-1, m).mean(0) for i in infos])
        w_f = np.stack([np.asarray(i["weights_feat"], dtype=np.float64).reshape(-1, m).mean(0) for i in infos])
        if self.ep_return is None:
            self.ep_return, self.ep_steps = np.zeros(k_envs), np.zeros(k_envs, dtype=np.int64)
        if self.ep_weight_logit is None:  # (also a one-env checkpoint taken right after an episode)
            self.ep_weight_logit, self.ep_weight_feat = np.zeros((k_envs, m)), np.zeros((k_envs, m))
        rec = self.logger.record
        for key in ("loss", "kd_loss", "feat_loss", "student_ce", "student_acc", "lr"):
            rec(f"step/{key}", float(np.mean([float(i[key]) for i in infos])))
        rec("step/reward", float(rewards.mean()))
        for name, wl, wf in zip(names, w_l.mean(0), w_f.mean(0)):
            rec(f"weight/logit/{name}", float(wl))
            if self.run.separate_weights:
                rec(f"weight/feat/{name}", float(wf))
        self.ep_return += rewards
        self.ep_steps += 1
        self.ep_weight_logit += w_l
        self.ep_weight_feat += w_f
        ended = [int(k) for k in np.flatnonzero(dones)]
        for k in ended:
            self._record_episode(k, infos[k], k_envs)
            self.logger.dump(self.model.num_timesteps)  # one row per episode
        if not ended:
            self.logger.dump(self.model.num_timesteps)
        if self.bar is not None:
            self.bar.update(self.model.num_timesteps - self.bar.n)
            self.bar.set_postfix(ep=self.episodes, acc=f"{infos[0]['student_acc']:.3f}", R=f"{self.ep_return[0]:.3f}",
                                 test=f"{self.last_test_acc:.4f}", refresh=False)
        for k in ended:
            self.ep_return[k], self.ep_steps[k] = 0.0, 0
            self.ep_weight_logit[k], self.ep_weight_feat[k] = 0.0, 0.0
        return True

    def _record_episode(self, k: int, info: dict, k_envs: int) -> None:
        rec, names = self.logger.record, self.run.teacher_keys
        self.episodes += 1
        self.last_test_acc = float(info.get("final_test_acc", float("nan")))
        rec("episode/index", self.episodes)
        if k_envs > 1:
            rec("episode/env", k)
        rec("episode/return", float(self.ep_return[k]))
        rec("episode/length", int(self.ep_steps[k]))
        rec("episode/final_val_acc", float(info.get("final_val_acc", float("nan"))))
        rec("episode/final_test_acc", self.last_test_acc)
        rec("episode/diverged", float(info.get("diverged", False)))
        if "twin_final_test_acc" in info:  # the lockstep AVER twin: the episode's advantage over equal weights
            rec("episode/advantage_val", float(info["final_val_acc"] - info["twin_final_val_acc"]))
            rec("episode/advantage_test", self.last_test_acc - float(info["twin_final_test_acc"]))
        steps = self.ep_steps[k]
        for name, wl, wf in zip(names, self.ep_weight_logit[k] / steps, self.ep_weight_feat[k] / steps):
            rec(f"episode/weight_logit/{name}", float(wl))
            if self.run.separate_weights:
                rec(f"episode/weight_feat/{name}", float(wf))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
