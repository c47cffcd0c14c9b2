"""`MultiTeacherKDEnv`: multi-teacher knowledge distillation as a Gymnasium environment.

One `step` = `steps_per_action` distillation iterations of the student with the chosen teacher
weights; one episode = one student training run. See `EnvConfig` for every knob.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from . import observations as obsmod
from .actions import to_simplex, weights_to_action
from .config import ConfigError, EnvConfig
from .engine import DistillationEngine
from .measurements import MeasurementPlan
from .rewards import StepResult, make_reward, needs_twin

__all__ = ["MultiTeacherKDEnv", "make_config"]


def make_config(config: Union[EnvConfig, dict, str, None] = None, **overrides: Any) -> EnvConfig:
    """An `EnvConfig` from a config object, a dict, a JSON/YAML path or nothing, plus overrides."""
    if config is None:
        base = EnvConfig()
    elif isinstance(config, EnvConfig):
        base = config
    elif isinstance(config, dict):
        base = EnvConfig.from_dict(config)
    elif isinstance(config, str):
        base = EnvConfig.from_file(config)
    else:
        raise ConfigError(f"config: expected EnvConfig, dict, a file path or None, got {type(config).__name__}")
    return base.replace(**overrides) if overrides else base


class MultiTeacherKDEnv(gym.Env):
    """A student distils from M frozen teachers; the agent sets the teachers' weights.

    Observation (`granularity="teacher"`): float32 vector of 5M + 4 batch statistics, named by
    `feature_names` (per teacher CE, accuracy, KL teacher->student, feature cosine, entropy; then
    student CE, accuracy, progress t/T, LR), clipped to finite bounds. Action: `Box(-1, 1, (M,))`,
    or `(2M,)` with `separate_feature_weights` (logit weights first).

    Observation (`granularity="sample"`): (B, F) per-sample state of the MTKD-RL paper, columns
    described by `sample_layout`. Action: `Box(-1, 1, (B, M))` or `(B, 2M)`.

    Actions become simplex weights by `action_transform` (or, with "select", equal weights over
    the selected teachers, zero when none is); the weights used are in `info`.
    `step_weights(w_logit, w_feat)` applies explicit non-negative weights instead (for formula
    baselines and agents that output weights).
    """

    metadata = {"render_modes": [], "render_fps": 1}

    def __init__(self, config: Union[EnvConfig, dict, str, None] = None, render_mode: Optional[str] = None,
                 **overrides: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: MultiTeacherKDEnv renders nothing; expected None, got {render_mode!r}")
        self.render_mode = None
        self.config = cfg = make_config(config, **overrides)
        self.reward_fn = make_reward(cfg.reward, cfg.granularity)
        self.logged_rewards = {name: make_reward(name, cfg.granularity) for name in cfg.log_rewards}
        rewards = [self.reward_fn, *self.logged_rewards.values()]
        self.engine = DistillationEngine(cfg, twin=needs_twin(rewards))
        self.measurements = MeasurementPlan(self.engine, rewards, cfg.reward_interval)
        self.dist = self.engine.dist
        self.num_teachers = m = self.engine.num_teachers
        self.batch_size = cfg.batch_size
        self.teacher_names = [t.name for t in self.engine.teachers]
        self.teacher_val_acc = np.array([t.val_acc for t in self.engine.teachers], dtype=np.float64)
        self.action_width = 2 * m if cfg.separate_feature_weights else m
        self._obs_columns = None
        if cfg.granularity == "teacher":
            low, high = obsmod.teacher_bounds(m)
            self.feature_names = obsmod.teacher_feature_names(self.teacher_names)
            if cfg.obs_features is not None:
                self._obs_columns = obsmod.teacher_columns(m, cfg.obs_features)
                low, high = low[self._obs_columns], high[self._obs_columns]
                self.feature_names = [self.feature_names[i] for i in self._obs_columns]
            self.sample_layout = None
            self.action_space = spaces.Box(-1.0, 1.0, (self.action_width,), dtype=np.float32)
        else:
            self.sample_layout = obsmod.sample_layout(self.engine.num_classes, self.engine.teacher_embedding_dims,
                                                      cfg.sample_obs_embeddings, cfg.sample_obs_logits,
                                                      self.engine.student_embedding_dim if cfg.sample_obs_student else 0)
            low, high = obsmod.sample_bounds(self.sample_layout, cfg.batch_size)
            self.feature_names = None
            self.action_space = spaces.Box(-1.0, 1.0, (cfg.batch_size, self.action_width), dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        # Teacher granularity: progress and LR are known on the host and appended there; the
        # device part is always all 5M + 2 statistics (`obs_features` selects on the host).
        self._obs_device_size = (5 * m + 2 if cfg.granularity == "teacher"
                                 else int(np.prod(self.observation_space.shape)))
        self.total_steps = self.engine.total_steps
        self._obs_low, self._obs_high = low, high
        self._t = 0
        self._episode_over = False
        self._episode_seed: Optional[int] = None
        self._previous: dict = {}
        """The latest value of every reward measurement (`StepResult.previous`)."""

    # --- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._episode_seed = int(self.np_random.integers(0, 2 ** 31 - 1))
        self.engine.reset(self._episode_seed)
        self._t = 0
        self._episode_over = False
        plan = self.measurements.at_reset()
        obs, _, values = self._gather_to_host(None, [], self._evaluate(plan))
        self._previous = MeasurementPlan.kept(plan, values, self.measurements.needs)
        info = {"episode_seed": self._episode_seed, "teacher_names": list(self.teacher_names),
                "teacher_val_acc": self.teacher_val_acc.copy(), "total_steps": self.total_steps}
        return obs, info

    def step(self, action: np.ndarray):
        w_logit, w_feat = self.action_to_weights(action)
        return self.step_weights(w_logit, w_feat)

    # --- actions ---------------------------------------------------------------------------
    @property
    def _weight_shape(self) -> Tuple[int, ...]:
        m = self.num_teachers
        return (m,) if self.config.granularity == "teacher" else (self.batch_size, m)

    def action_to_weights(self, action) -> Tuple[np.ndarray, np.ndarray]:
        """Validate `action` and map it to (logit weights, feature weights) on the simplex."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}; expected {self.action_space.shape} "
                             f"({'(B, ' if self.config.granularity == 'sample' else '('}"
                             f"{'2M' if self.config.separate_feature_weights else 'M'}) with M = {self.num_teachers})")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf; expected finite values in [-1, 1]")
        a = np.clip(a, -1.0, 1.0)
        m = self.num_teachers
        logit_part = a[..., :m]
        feat_part = a[..., m:] if self.config.separate_feature_weights else logit_part
        return self._to_simplex(logit_part), self._to_simplex(feat_part)

    def _to_simplex(self, a: np.ndarray) -> np.ndarray:
        return to_simplex(a, self.config.action_transform, self.config.action_temperature)

    def weights_to_action(self, w_logit: np.ndarray, w_feat: Optional[np.ndarray] = None) -> np.ndarray:
        """An action that maps back to these weights (exact for "linear"; for "softmax" exact up
        to the clip of the log-ratio range to [-1, 1])."""
        parts = [w_logit] + ([w_feat if w_feat is not None else w_logit]
                             if self.config.separate_feature_weights else [])
        parts = [np.broadcast_to(np.asarray(w, dtype=np.float64), self._weight_shape) for w in parts]
        return weights_to_action(parts, self.config.action_transform, self.config.action_temperature)

    # --- the step --------------------------------------------------------------------------
    def step_weights(self, w_logit, w_feat=None):
        """Run one env step with explicit non-negative weights, used as given (not renormalised).

        `w_logit`, `w_feat`: (M,) in teacher granularity, (M,) or (B, M) in sample granularity;
        `w_feat=None` reuses `w_logit`.
        """
        if self.engine.batch is None:
            raise RuntimeError("call reset() before step()")
        if self._episode_over:
            raise RuntimeError("the episode has ended (terminated=True); call reset() before step()")
        wl = self._check_weights("w_logit", w_logit)
        wf = wl if w_feat is None else self._check_weights("w_feat", w_feat)
        engine, cfg = self.engine, self.config
        if self.dist.enabled:  # one agent, one decision: every rank applies rank 0's weights
            wl = self.dist.broadcast_array(wl, engine.device).astype(np.float32)
            wf = self.dist.broadcast_array(wf, engine.device).astype(np.float32)
        wl_t, wf_t = torch.as_tensor(wl, device=engine.device), torch.as_tensor(wf, device=engine.device)
        if wl_t.dim() == 2 and self.dist.enabled:  # per-sample weights: this rank's rows
            rows = slice(self.dist.rank * engine.loader.local_batch, (self.dist.rank + 1) * engine.loader.local_batch)
            wl_t, wf_t = wl_t[rows], wf_t[rows]
        loss_sum = None
        for i in range(cfg.steps_per_action):
            if i:
                engine.advance()
            out = engine.apply(wl_t, wf_t)
            loss_sum = out["loss"] if loss_sum is None else loss_sum + out["loss"]
            if engine.done:
                break
        iterations = i + 1
        self._t += 1
        terminated = engine.done

        # Measure the updated student before the next batch's forward touches its BN statistics.
        plan = self.measurements.at_step(self._t, terminated)
        evals = self._evaluate(plan)
        if not terminated:
            engine.advance()  # the observation describes the batch the next action will weight

        # One device->host copy for the observation, the reward inputs and the info.
        scalars = [loss_sum / iterations, out["kd_loss"], out["feat_loss"], out["student_ce"], out["student_acc"]]
        obs, per_sample, vals = self._gather_to_host(out["per_sample_loss"], scalars, evals)
        loss, kd_loss, feat_loss, student_ce, student_acc = (float(v) for v in vals[:5])
        everything = dict(zip(MeasurementPlan.names(plan), vals[5:]))
        measured = {n: v for n, v in everything.items() if n in self.measurements.needs}
        val_step = self.measurements.is_val_step(self._t, terminated)
        val_acc = measured.get("val_acc") if val_step else None

        result = StepResult(step=self._t, loss=loss, per_sample_loss=per_sample, student_ce=student_ce,
                            student_acc=student_acc, probe_loss_before=self._previous.get("probe_loss"),
                            probe_loss_after=measured.get("probe_loss"), val_acc=val_acc,
                            prev_val_acc=self._previous.get("val_acc"), terminal=terminated,
                            measured=measured, previous=dict(self._previous))
        info = {"step": self._t, "iteration": engine.iteration, "epoch": engine.loader.epoch,
                "weights_logit": np.asarray(wl, dtype=np.float32).copy(),
                "weights_feat": np.asarray(wf, dtype=np.float32).copy(),
                "loss": loss, "kd_loss": kd_loss, "feat_loss": feat_loss, "student_ce": student_ce,
                "student_acc": student_acc, "lr": engine.lr, "diverged": False}
        diverged = not np.isfinite(loss)
        if diverged:
            reward, terminated = float(cfg.divergence_penalty), True
            info["diverged"] = True
        else:
            reward, extra = self.reward_fn(result)
            info.update(extra)
            if not np.isfinite(reward):
                reward = float(cfg.divergence_penalty)
        if self.logged_rewards:
            info["rewards"] = {name: (float(cfg.divergence_penalty) if diverged else float(fn(result)[0]))
                               for name, fn in self.logged_rewards.items()}
        if val_acc is not None:
            info["val_acc"] = val_acc
        self._previous.update(measured)
        if terminated:
            if not engine.done:  # ended early by divergence: the final measurements are not in the copy above
                final = self.measurements.final()
                everything = dict(zip(MeasurementPlan.names(final),
                                      self._gather_to_host(None, [], self._evaluate(final))[2]))
            info["final_val_acc"], info["final_test_acc"] = everything["val_acc"], everything["test_acc"]
            if engine.has_twin:
                info["twin_final_val_acc"] = everything["twin_val_acc"]
                info["twin_final_test_acc"] = everything["twin_test_acc"]
            info["episode_seed"] = self._episode_seed
            self._episode_over = True
        return obs, float(reward), bool(terminated), False, info

    def _evaluate(self, plan) -> torch.Tensor:
        """Run a measurement plan's evaluations on rank 0, as one flat device tensor; zeros
        elsewhere (broadcast later)."""
        device = self.engine.device
        size = len(MeasurementPlan.names(plan))
        if not size:
            return torch.zeros(0, device=device)
        if self.dist.is_main:
            return torch.cat([fn().float().reshape(-1) for _, fn in plan])
        return torch.zeros(size, device=device)

    def _check_weights(self, name: str, w) -> np.ndarray:
        arr = np.asarray(w, dtype=np.float32)
        shapes = [(self.num_teachers,)] + ([(self.batch_size, self.num_teachers)]
                                           if self.config.granularity == "sample" else [])
        if arr.shape not in shapes:
            raise ValueError(f"{name} has shape {arr.shape}; expected one of {shapes} (M = {self.num_teachers})")
        bad = np.argwhere(~(np.isfinite(arr) & (arr >= 0)))
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            raise ValueError(f"{name} must be finite and non-negative; {name}[{', '.join(map(str, where))}] = "
                             f"{arr[where]!r} ({len(bad)} bad entries)")
        return arr

    # --- observations ----------------------------------------------------------------------
    def _obs_tensor(self) -> torch.Tensor:
        """This rank's observation part: (5M + 2,) batch means, or (b, F) per-sample rows."""
        batch, cfg = self.engine.batch, self.config
        if cfg.granularity == "teacher":
            return obsmod.teacher_obs(batch)
        return obsmod.sample_obs(batch, cfg.sample_obs_embeddings, cfg.sample_obs_logits, cfg.sample_obs_student)

    def _gather_to_host(self, per_sample: Optional[torch.Tensor], scalars: list,
                        evals: Optional[torch.Tensor] = None):
        """The step's single device->host copy: observation, per-sample loss (B,), batch scalars and
        evaluations (`_evaluate`'s vector: probe loss, accuracies).

        Under torch.distributed, batch means and scalars are averaged over ranks (equal shards),
        per-sample rows are gathered, and evaluations are rank 0's (its BatchNorm statistics are the
        ones its checkpoint saves), so every rank returns the same global values."""
        obs = self._obs_tensor()
        if self.config.granularity == "teacher":
            means = torch.cat([obs, *(s.float().reshape(1) for s in scalars)])
            rows = None if per_sample is None else per_sample.float()[:, None]
        else:
            means = torch.stack(scalars).float() if scalars else obs.new_zeros(0)
            rows = obs if per_sample is None else torch.cat([obs, per_sample.float()[:, None]], dim=1)
        evals = obs.new_zeros(0) if evals is None else evals
        means = torch.cat([self.dist.mean(means), self.dist.broadcast(evals)])
        n_vals = len(scalars) + len(evals)
        if rows is not None:
            rows = self.dist.gather_rows(rows)
        host = torch.cat([means] + ([] if rows is None else [rows.flatten()])).cpu().numpy().astype(np.float64)
        if self.config.granularity == "teacher":
            n = self._obs_device_size
            obs_flat, vals = host[:n], host[n:n + n_vals]
            per = host[n + n_vals:] if per_sample is not None else None
        else:
            vals, table = host[:n_vals], host[n_vals:].reshape(self.batch_size, -1)
            obs_flat, per = (table[:, :-1], table[:, -1]) if per_sample is not None else (table, None)
        return self._to_obs(obs_flat.reshape(-1)), per, [float(v) for v in vals]

    def _to_obs(self, flat: np.ndarray) -> np.ndarray:
        if self.config.granularity == "teacher":
            progress = min(1.0, self.engine.iteration / self.engine.total_iterations)
            flat = np.concatenate([flat, [progress, self.engine.lr]])
            if self._obs_columns is not None:
                flat = flat[self._obs_columns]
        obs = np.nan_to_num(flat.reshape(self.observation_space.shape), nan=0.0, posinf=obsmod.OBS_LIMIT,
                            neginf=-obsmod.OBS_LIMIT)
        return np.clip(obs, self._obs_low, self._obs_high).astype(np.float32)

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Episode state: engine (student, projectors, optimiser, scheduler, data position) plus
        the env's own counters and RNG."""
        return {"engine": self.engine.state_dict(), "t": self._t, "episode_seed": self._episode_seed,
                "previous": dict(self._previous), "np_random": self.np_random.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if self.engine.student is None:
            self.reset()
        self.engine.load_state_dict(state["engine"])
        self._t, self._episode_seed = int(state["t"]), state["episode_seed"]
        self._previous = dict(state["previous"])
        self._episode_over = False
        self.np_random.bit_generator.state = state["np_random"]

    def current_observation(self) -> np.ndarray:
        """The observation of the prepared batch (after `load_state_dict`, say)."""
        return self._gather_to_host(None, [])[0]
