"""`MultiTeacherKDEnv`: multi-teacher knowledge distillation as a Gymnasium environment.

One `step` = `steps_per_action` distillation iterations of the student with the chosen teacher
weights; one episode = one student training run. See `EnvConfig` for every knob.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .config import ConfigError, EnvConfig
from .engine.core import DistillationEngine
from .engine.observe import sample_obs, teacher_obs
from .mdp import observations as obsmod
from .mdp.actions import ActionMap, check_reset_options, check_seed
from .mdp.measurements import MeasurementPlan
from .mdp.rewards import StepResult, config_rewards, needs_twin
from .mdp.stepping import Pending, run_iterations, to_host
from .scenarios import instance_sets

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
                 engine: Any = None, **overrides: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: MultiTeacherKDEnv renders nothing; expected None, got {render_mode!r}")
        self.render_mode = None
        self.config = cfg = make_config(config, **overrides)
        self.reward_fn, self.logged_rewards = config_rewards(cfg)
        rewards = [self.reward_fn, *self.logged_rewards.values()]
        twin = needs_twin(rewards)
        # `engine`: what drives the student instead of an own `DistillationEngine` (the batched
        # vector env passes each sub-env its row of the batched engine, `mtkd_env.engine.batched.EngineSlot`).
        if engine is not None and engine.has_twin != twin:
            raise ValueError(f"engine {'has' if engine.has_twin else 'has no'} twin student but the rewards "
                             f"{'need' if twin else 'do not need'} one")
        credit = sorted({r.credit_target for r in rewards if r.needs_credit})
        self._credit_targets: Tuple[str, ...] = tuple(credit)
        """`engine.kd_credit` targets the rewards need (computed before each update)."""
        if credit and cfg.task != "classification":
            raise ConfigError(f"credit rewards (kd_credit, kd_label_credit): for task 'classification', got {cfg.task!r}")
        if credit and engine is not None:
            raise ConfigError("credit rewards (kd_credit, kd_label_credit): the batched vector env cannot compute it (one credit pass per "
                              "student); expected vec_env 'dummy' or 'subproc'")
        self.engine = DistillationEngine(cfg, twin=twin) if engine is None else engine
        self.measurements = MeasurementPlan(self.engine, rewards, cfg.reward_interval)
        self.dist = self.engine.dist
        if credit and self.dist.enabled:
            raise ConfigError("credit rewards (kd_credit, kd_label_credit): need the whole batch on one process; expected a run without "
                              "torch.distributed")
        self.num_teachers = m = self.engine.num_teachers
        self.instances: Optional[List[Tuple[int, ...]]] = None
        """With `pool_size`: the configured instance set (ordered bank indices per instance)."""
        self.instance: Optional[int] = None
        """The index of this episode's instance in `instances`."""
        if cfg.pool_size is not None:
            train, test = instance_sets(len(cfg.teachers), cfg.pool_size, cfg.instance_seed)
            self.instances = train if cfg.instance_set == "train" else test
            if (cfg.granularity == "sample" and cfg.sample_obs_embeddings
                    and len(set(self.engine.bank_embedding_dims)) > 1):
                raise ConfigError(f"pool_size: the sample-granularity state holds each teacher's embedding, and the "
                                  f"bank's embedding sizes differ ({self.engine.bank_embedding_dims}); set "
                                  f"sample_obs_embeddings=false or use the teacher granularity")
        self.batch_size = cfg.batch_size
        self.action_map = ActionMap(cfg.action_transform, cfg.action_temperature, m, cfg.batch_size,
                                    cfg.separate_feature_weights, cfg.granularity)
        self.action_width = self.action_map.width
        self._obs_columns = None
        if cfg.granularity == "teacher":
            low, high = obsmod.teacher_bounds(m)
            if cfg.obs_features is not None:
                self._obs_columns = obsmod.teacher_columns(m, cfg.obs_features)
                low, high = low[self._obs_columns], high[self._obs_columns]
            self.sample_layout = None
        else:
            self.sample_layout = obsmod.sample_layout(self.engine.num_classes, self.engine.teacher_embedding_dims,
                                                      cfg.sample_obs_embeddings, cfg.sample_obs_logits,
                                                      self.engine.student_embedding_dim if cfg.sample_obs_student else 0)
            low, high = obsmod.sample_bounds(self.sample_layout, cfg.batch_size)
        self._name_teachers()
        self.action_space = spaces.Box(-1.0, 1.0, self.action_map.shape, dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.total_steps = self.engine.total_steps
        self._obs_low, self._obs_high = low, high
        self._t = 0
        self._episode_over = False
        self._episode_seed: Optional[int] = None
        self._previous: dict = {}
        """The latest value of every reward measurement (`StepResult.previous`)."""

    # --- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        seed = None if seed is None else check_seed(seed)
        check_reset_options(options, ("instance",) if self.instances is not None else (), "MultiTeacherKDEnv")
        self.begin_reset(seed, None if options is None else options.get("instance"))
        pending = self.reset_measurements()
        return self.finish_reset(pending, to_host(self.reset_parts(pending)))

    def step(self, action: np.ndarray):
        w_logit, w_feat = self.action_to_weights(action)
        return self.step_weights(w_logit, w_feat)

    # --- actions ---------------------------------------------------------------------------
    def action_to_weights(self, action) -> Tuple[np.ndarray, np.ndarray]:
        """Validate `action` and map it to (logit weights, feature weights) on the simplex."""
        return self.action_map.to_weights(action)

    def weights_to_action(self, w_logit: np.ndarray, w_feat: Optional[np.ndarray] = None) -> np.ndarray:
        """An action that maps back to these weights (exact for "linear"; for "softmax" exact up
        to the clip of the log-ratio range to [-1, 1])."""
        return self.action_map.to_action(w_logit, w_feat)

    # --- the step --------------------------------------------------------------------------
    def step_weights(self, w_logit, w_feat=None):
        """Run one env step with explicit non-negative weights, used as given (not renormalised).

        `w_logit`, `w_feat`: (M,) in teacher granularity, (M,) or (B, M) in sample granularity;
        `w_feat=None` reuses `w_logit`.
        """
        wl, wf = self.checked_weights(w_logit, w_feat)
        wl_t, wf_t = self._on_device(wl, wf)
        # the credits of the batch before the update changes the student
        credits = {target: self.engine.kd_credit(target) for target in self._credit_targets}
        out, loss = run_iterations(self.engine, wl_t, wf_t, self.config.steps_per_action)
        pending = self.after_update(out, loss, wl, wf)
        pending.credits = credits
        if not pending.terminated:
            self.engine.advance()  # the observation describes the batch the next action will weight
        return self.finish_step(pending, to_host(self.step_parts(pending)))

    # The step in phases. `reset` and `step_weights` run them in order on this env's engine; the
    # batched vector env (`mtkd_env.vector_env`) runs each phase for all its sub-envs, with one
    # batched update between `checked_weights` and `after_update`, one forward of every student
    # before `step_parts`, and one device->host copy for all of them.
    def begin_reset(self, seed: Optional[int], instance: Optional[int] = None) -> None:
        """Seed the env's RNG, draw the episode seed (and, with instance sets, the episode's
        instance, unless `instance` names one) and reset the engine's student from it."""
        super().reset(seed=seed)
        self._episode_seed = int(self.np_random.integers(0, 2 ** 31 - 1))
        if self.instances is not None:
            self._use_instance(instance)
        self.engine.reset(self._episode_seed)
        self._t = 0
        self._episode_over = False

    def _use_instance(self, instance: Optional[int]) -> None:
        n = len(self.instances)
        if instance is None:
            instance = self.config.instance
        if instance is None:
            instance = int(self.np_random.integers(0, n))
        elif isinstance(instance, bool) or not isinstance(instance, (int, np.integer)) or not 0 <= instance < n:
            raise ValueError(f"options['instance']: expected an integer in [0, {n}) (the {self.config.instance_set} "
                             f"instance set), got {str(instance)[:40]!r}")
        self.instance = int(instance)
        self.engine.use_pool(self.instances[self.instance])
        self._name_teachers()

    def _name_teachers(self) -> None:
        """`teacher_names`, `teacher_val_acc` and the observation's `feature_names` of the engine's
        active pool (with instance sets they change with the episode's instance)."""
        self.teacher_names = [t.name for t in self.engine.teachers]
        self.teacher_val_acc = np.array([t.val_acc for t in self.engine.teachers], dtype=np.float64)
        self.feature_names = None
        if self.config.granularity == "teacher":
            names = obsmod.teacher_feature_names(self.teacher_names)
            self.feature_names = names if self._obs_columns is None else [names[i] for i in self._obs_columns]

    def reset_measurements(self) -> "Pending":
        plan = self.measurements.at_reset()
        return Pending(plan, self._evaluate(plan))

    def reset_parts(self, pending: "Pending", obs: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        return self._device_parts(None, [], pending.evals, obs)

    def finish_reset(self, pending: "Pending", host: List[np.ndarray]):
        obs, _, values = self._from_host(host)
        self._previous = MeasurementPlan.kept(pending.plan, values, self.measurements.needs)
        info = {"episode_seed": self._episode_seed, "teacher_names": list(self.teacher_names),
                "teacher_val_acc": self.teacher_val_acc.copy(), "total_steps": self.total_steps}
        if self.instances is not None:
            info["instance"] = f"{self.config.instance_set}:{self.instance}"
            info["pool"] = list(self.engine.pool)
        return obs, info

    def checked_weights(self, w_logit, w_feat=None) -> Tuple[np.ndarray, np.ndarray]:
        """The step's weights, validated (and rank 0's under torch.distributed)."""
        if self.engine.batch is None:
            raise RuntimeError("call reset() before step()")
        if self._episode_over:
            raise RuntimeError("the episode has ended (terminated=True); call reset() before step()")
        wl = self.action_map.check("w_logit", w_logit)
        wf = wl if w_feat is None else self.action_map.check("w_feat", w_feat)
        if self.dist.enabled:  # one agent, one decision: every rank applies rank 0's weights
            wl = self.dist.broadcast_array(wl, self.engine.device).astype(np.float32)
            wf = self.dist.broadcast_array(wf, self.engine.device).astype(np.float32)
        return wl, wf

    def _on_device(self, wl: np.ndarray, wf: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        engine = self.engine
        wl_t, wf_t = torch.as_tensor(wl, device=engine.device), torch.as_tensor(wf, device=engine.device)
        if wl_t.dim() == 2 and self.dist.enabled:  # per-sample weights: this rank's rows
            rows = slice(self.dist.rank * engine.loader.local_batch, (self.dist.rank + 1) * engine.loader.local_batch)
            wl_t, wf_t = wl_t[rows], wf_t[rows]
        return wl_t, wf_t

    def after_update(self, out: dict, loss: torch.Tensor, wl: np.ndarray, wf: np.ndarray) -> "Pending":
        """Count the step and measure the updated student, before the next batch's forward
        touches its BN statistics. `out`: the engine's `apply` result; `loss`: the step's mean loss."""
        self._t += 1
        terminated = self.engine.done
        plan = self.measurements.at_step(self._t, terminated)
        return Pending(plan, self._evaluate(plan), terminated, out, loss, wl, wf)

    def step_parts(self, pending: "Pending", obs: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        out = pending.out
        scalars = [pending.loss, out["kd_loss"], out["feat_loss"], out["student_ce"], out["student_acc"]]
        return self._device_parts(out["per_sample_loss"], scalars, pending.evals, obs)

    def finish_step(self, pending: "Pending", host: List[np.ndarray]):
        """Reward, info and termination from the step's host values."""
        engine, cfg, plan, terminated = self.engine, self.config, pending.plan, pending.terminated
        obs, per_sample, vals = self._from_host(host)
        loss, kd_loss, feat_loss, student_ce, student_acc = vals[:5]
        everything = dict(zip(MeasurementPlan.names(plan), vals[5:]))
        measured = {n: v for n, v in everything.items() if n in self.measurements.needs}
        val_step = self.measurements.is_val_step(self._t, terminated)
        val_acc = measured.get("val_acc") if val_step else None

        result = StepResult(step=self._t, loss=loss, per_sample_loss=per_sample, student_ce=student_ce,
                            student_acc=student_acc, probe_loss_before=self._previous.get("probe_loss"),
                            probe_loss_after=measured.get("probe_loss"), val_acc=val_acc,
                            prev_val_acc=self._previous.get("val_acc"), terminal=terminated,
                            measured=measured, previous=dict(self._previous),
                            credits={k: v.double().cpu().numpy() for k, v in pending.credits.items()},
                            weights=pending.wl)
        info = {"step": self._t, "iteration": engine.iteration, "epoch": engine.loader.epoch,
                "weights_logit": np.asarray(pending.wl, dtype=np.float32).copy(),
                "weights_feat": np.asarray(pending.wf, dtype=np.float32).copy(),
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
                parts = self._device_parts(None, [], self._evaluate(final))
                everything = dict(zip(MeasurementPlan.names(final), self._from_host(to_host(parts))[2]))
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

    # --- observations ----------------------------------------------------------------------
    def _obs_tensor(self) -> torch.Tensor:
        """This rank's observation part: (5M + 2,) batch means, or (b, F) per-sample rows."""
        batch, cfg = self.engine.batch, self.config
        if cfg.granularity == "teacher":
            return teacher_obs(batch)
        return sample_obs(batch, cfg.sample_obs_embeddings, cfg.sample_obs_logits, cfg.sample_obs_student)

    def _device_parts(self, per_sample: Optional[torch.Tensor], scalars: list, evals: torch.Tensor,
                      obs: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """What a step copies to the host: [observation part (`_obs_tensor`, or `obs` when the
        caller computed it), per-sample loss (B,) or empty, values (the batch scalars, then
        `_evaluate`'s evaluations: probe loss, accuracies)].

        Under torch.distributed, batch means and scalars are averaged over ranks (equal shards),
        per-sample rows are gathered, and evaluations are rank 0's (its BatchNorm statistics are the
        ones its checkpoint saves), so every rank returns the same global values."""
        obs = self._obs_tensor() if obs is None else obs
        scalars_t = torch.stack([s.float().reshape(()) for s in scalars]) if scalars else obs.new_zeros(0)
        empty = obs.new_zeros(0)
        if self.config.granularity == "teacher":
            means = self.dist.mean(torch.cat([obs, scalars_t]))
            obs, scalars_t = means[:len(obs)], means[len(obs):]
            per = empty if per_sample is None else self.dist.gather_rows(per_sample.float()[:, None])[:, 0]
        else:
            scalars_t = self.dist.mean(scalars_t)
            width = obs.shape[1]
            rows = obs if per_sample is None else torch.cat([obs, per_sample.float()[:, None]], dim=1)
            rows = self.dist.gather_rows(rows)
            obs, per = rows[:, :width], (empty if per_sample is None else rows[:, width])
        return [obs, per, torch.cat([scalars_t, self.dist.broadcast(evals.float())])]

    def _from_host(self, host: List[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray], List[float]]:
        """(observation, per-sample loss or None, values) from the host copy of `_device_parts`."""
        obs_flat, per, vals = host
        return self._to_obs(obs_flat), (per if per.size else None), [float(v) for v in vals]

    def _to_obs(self, flat: np.ndarray) -> np.ndarray:
        flat = flat.reshape(-1)
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
        return {"engine": self.engine.state_dict(), **self.host_state()}

    def host_state(self) -> dict:
        """The env's own part of `state_dict` (counters, last measurements, RNG, the instance)."""
        return {"t": self._t, "episode_seed": self._episode_seed, "previous": dict(self._previous),
                "np_random": self.np_random.bit_generator.state, "instance": self.instance}

    def load_state_dict(self, state: dict) -> None:
        instance = state.get("instance")
        if self.instances is not None and instance is not None and (self.engine.student is None
                                                                    or int(instance) != self.instance):
            # The saved episode's pool first: its projectors (one per teacher, shaped by that
            # teacher's features) must exist before the saved ones are loaded into them.
            self.reset(options={"instance": int(instance)})
        elif self.engine.student is None:
            self.reset()
        self.engine.load_state_dict(state["engine"])
        self.load_host_state(state)

    def load_host_state(self, state: dict) -> None:
        self._t, self._episode_seed = int(state["t"]), state["episode_seed"]
        self._previous = dict(state["previous"])
        self._episode_over = False
        self.np_random.bit_generator.state = state["np_random"]

    def current_observation(self) -> np.ndarray:
        """The observation of the prepared batch (after `load_state_dict`, say)."""
        return self._from_host(to_host(self._device_parts(None, [], torch.zeros(0, device=self.engine.device))))[0]
