"""The SB3 callback of a training run: per-step and per-episode metrics, the progress bar, and the
safe points at which the run checkpoints."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["RunCallback"]


class RunCallback(BaseCallback):
    """Logs every step and episode, drives the progress bar and checkpoints at safe points."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run
        self.episodes = 0
        self.ep_return = 0.0
        self.ep_steps = 0
        self.ep_weight_logit: Optional[np.ndarray] = None
        self.ep_weight_feat: Optional[np.ndarray] = None
        self.last_test_acc = float("nan")
        self.bar = None

    def state_dict(self) -> dict:
        t = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731
        return {"episodes": self.episodes, "ep_return": self.ep_return, "ep_steps": self.ep_steps,
                "ep_weight_logit": t(self.ep_weight_logit), "ep_weight_feat": t(self.ep_weight_feat),
                "last_test_acc": self.last_test_acc}

    def load_state_dict(self, state: dict) -> None:
        n = lambda a: None if a is None else a.numpy().copy()  # noqa: E731
        self.episodes, self.ep_return, self.ep_steps = int(state["episodes"]), float(state["ep_return"]), int(state["ep_steps"])
        self.ep_weight_logit, self.ep_weight_feat = n(state["ep_weight_logit"]), n(state["ep_weight_feat"])
        self.last_test_acc = float(state["last_test_acc"])

    def _on_training_start(self) -> None:
        if self.run.settings.show_progress and self.run.dist.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.run.settings.total_timesteps, initial=self.model.num_timesteps,
                            desc=self.run.settings.algo, unit="step", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        self.run.safe_point()

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        done = bool(self.locals["dones"][0])
        reward = self.run.agent.raw_reward(self.locals)
        names = self.run.teacher_keys
        w_l = np.asarray(info["weights_logit"], dtype=np.float64).reshape(-1, len(names)).mean(0)
        w_f = np.asarray(info["weights_feat"], dtype=np.float64).reshape(-1, len(names)).mean(0)
        rec = self.logger.record
        for key in ("loss", "kd_loss", "feat_loss", "student_ce", "student_acc", "lr"):
            rec(f"step/{key}", float(info[key]))
        rec("step/reward", reward)
        for name, wl, wf in zip(names, w_l, w_f):
            rec(f"weight/logit/{name}", float(wl))
            if self.run.separate_weights:
                rec(f"weight/feat/{name}", float(wf))
        self.ep_return += reward
        self.ep_steps += 1
        self.ep_weight_logit = w_l if self.ep_weight_logit is None else self.ep_weight_logit + w_l
        self.ep_weight_feat = w_f if self.ep_weight_feat is None else self.ep_weight_feat + w_f
        if done:
            self.episodes += 1
            self.last_test_acc = float(info.get("final_test_acc", float("nan")))
            rec("episode/index", self.episodes)
            rec("episode/return", self.ep_return)
            rec("episode/length", self.ep_steps)
            rec("episode/final_val_acc", float(info.get("final_val_acc", float("nan"))))
            rec("episode/final_test_acc", self.last_test_acc)
            rec("episode/diverged", float(info.get("diverged", False)))
            if "twin_final_test_acc" in info:  # the lockstep AVER twin: the episode's advantage over equal weights
                rec("episode/advantage_val", float(info["final_val_acc"] - info["twin_final_val_acc"]))
                rec("episode/advantage_test", self.last_test_acc - float(info["twin_final_test_acc"]))
            for name, wl, wf in zip(names, self.ep_weight_logit / self.ep_steps, self.ep_weight_feat / self.ep_steps):
                rec(f"episode/weight_logit/{name}", float(wl))
                if self.run.separate_weights:
                    rec(f"episode/weight_feat/{name}", float(wf))
        self.logger.dump(self.model.num_timesteps)
        if self.bar is not None:
            self.bar.update(self.model.num_timesteps - self.bar.n)
            self.bar.set_postfix(ep=self.episodes, acc=f"{info['student_acc']:.3f}", R=f"{self.ep_return:.3f}",
                                 test=f"{self.last_test_acc:.4f}", refresh=False)
        if done:
            self.ep_return, self.ep_steps = 0.0, 0
            self.ep_weight_logit = self.ep_weight_feat = None
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
