"""`MultiTeacherKDVectorEnv`: K sub-envs of `MultiTeacherKD-v0` whose students train as one batch.

    envs = gym.make_vec("MultiTeacherKD-v0", num_envs=8)        # vector_entry_point: this class
    envs = gym.make_vec("MultiTeacherKD-v0", num_envs=8, vectorization_mode="sync")   # K envs in turn

The teachers are loaded once; each step runs one batched forward/backward of all K students
(`mtkd_env.engine.batched.BatchedEngine`) and one device->host copy. Sub-env k is an ordinary
`MultiTeacherKDEnv` driven through its row of the batched engine, so it computes the same
observation, reward and info as the single env: sub-env k of a vector env reset with seed s
follows the single env reset with seed s + k (the same trajectory within float tolerance).

Autoreset follows Gymnasium 1.x (`metadata["autoreset_mode"]`, default NEXT_STEP: the step after
a termination returns the reset observation with reward 0 and ignores that sub-env's action;
SAME_STEP: the terminal observation and info go to `info["final_obs"]` / `info["final_info"]`;
DISABLED: call `reset(options={"reset_mask": mask})`). Sub-envs may reset at different times
(an early end by divergence).

Options: `shared_batches=True` makes every sub-env draw the same batches, so the teachers' forward
is shared (for paired comparisons of weightings; off by default). `vectorize`: the students'
forward as one grouped network ("grouped", the CPU default for tiny_cnn, cnn and mlp), one `vmap`
("vmap" or True, the CUDA default) or row by row ("rows" or False, the CPU default otherwise). Everything else is an
`EnvConfig` field, passed as `config=` or as keyword overrides, as for the single env.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .engine.batched import BatchedEngine
from .config import EnvConfig
from .env import MultiTeacherKDEnv, make_config
from .mdp.actions import as_real_array, check_reset_options, check_seed
from .mdp.stepping import run_iterations, to_host
from .mdp.rewards import config_rewards, needs_twin

__all__ = ["MultiTeacherKDVectorEnv"]


class MultiTeacherKDVectorEnv(VectorEnv):
    """K students distilled in one process; spaces are the single env's, batched."""

    metadata = {"render_modes": [], "render_fps": 1, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: Union[EnvConfig, dict, str, None] = None, *,
                 shared_batches: bool = False, autoreset_mode: Union[str, AutoresetMode] = AutoresetMode.NEXT_STEP,
                 vectorize: Union[bool, str, None] = None, render_mode: Optional[str] = None, **overrides: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode: MultiTeacherKDVectorEnv renders nothing; expected None, got {render_mode!r}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(f"autoreset_mode: expected one of {[m.value for m in AutoresetMode]}, got "
                             f"{autoreset_mode!r}") from None
        self.config = cfg = make_config(config, **overrides)
        reward, logged = config_rewards(cfg)
        self.engine = BatchedEngine(cfg, num_envs, twin=needs_twin([reward, *logged.values()]),
                                    shared_batches=shared_batches,
                                    vectorize=vectorize)
        self.shared_batches = bool(shared_batches)
        self.envs: List[MultiTeacherKDEnv] = [MultiTeacherKDEnv(cfg, engine=slot) for slot in self.engine.slots]
        self.num_envs = num_envs
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = None
        first = self.envs[0]
        self.single_observation_space, self.single_action_space = first.observation_space, first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.teacher_names = first.teacher_names
        self._obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: Union[int, Sequence[Optional[int]], None] = None, options: Optional[dict] = None):
        """Reset every sub-env (sub-env k with seed + k for an int seed), or those of
        `options["reset_mask"]` (a (K,) bool array)."""
        seeds = self._seeds(seed)
        check_reset_options(options, ("reset_mask",), "MultiTeacherKDVectorEnv")
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask']: expected a bool array of shape ({self.num_envs},) with at "
                                 f"least one True, got {mask!r}")
        rows = [int(k) for k in np.flatnonzero(mask)]
        if self.engine.batch is None and len(rows) < self.num_envs:
            raise ValueError("reset: the first reset must reset every sub-env (no reset_mask)")
        infos: dict = {}
        for k, info in zip(rows, self.reset_rows(rows, [seeds[k] for k in rows])):
            infos = self._add_info(infos, info, k)
        return self._obs.copy(), infos

    def step(self, actions):
        obs, rewards, terminated, truncated, row_infos = self.step_rows(actions)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        done = [int(k) for k in np.flatnonzero(terminated | truncated)] if same_step else []
        infos: dict = {}
        for k, info in enumerate(row_infos):
            if k not in done:  # as SyncVectorEnv: an ended sub-env's step info goes to final_info
                infos = self._add_info(infos, info, k)
        if done:
            for k in done:
                infos = self._add_info(infos, {"final_obs": obs[k], "final_info": row_infos[k]}, k)
            for k, info in zip(done, self.reset_rows(done, [None] * len(done))):
                infos = self._add_info(infos, info, k)
            obs = self._obs.copy()
        return obs, rewards, terminated, truncated, infos

    # --- per-row API (also used by the Stable-Baselines3 adapter) ------------------------------
    def reset_rows(self, rows: Sequence[int], seeds: Sequence[Optional[int]]) -> List[dict]:
        """Reset the sub-envs `rows` (with these seeds; None continues each sub-env's RNG) and
        return their reset infos; their observations are in `self.observations`."""
        envs = self.envs
        for k, seed in zip(rows, seeds):
            envs[k].begin_reset(seed)
        self.engine.forward(None if len(rows) == self.num_envs else rows)
        pending = [envs[k].reset_measurements() for k in rows]
        obs = self.engine.observations()
        parts = [envs[k].reset_parts(p, obs[k]) for k, p in zip(rows, pending)]
        host = to_host([t for part in parts for t in part])
        infos = []
        for i, (k, p) in enumerate(zip(rows, pending)):
            self._obs[k], info = envs[k].finish_reset(p, host[3 * i:3 * i + 3])
            infos.append(info)
        self._autoreset[list(rows)] = False
        return infos

    def step_rows(self, actions) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, List[dict]]:
        """One step of every sub-env with per-row infos; sub-envs that ended on the previous step
        are reset instead in NEXT_STEP mode (reward 0). No other autoreset."""
        a = as_real_array(actions, "actions")
        if a.shape != self.action_space.shape:
            raise ValueError(f"actions have shape {a.shape}; expected {self.action_space.shape} (num_envs = "
                             f"{self.num_envs}, then the single env's action shape)")
        k_all, envs, engine = self.num_envs, self.envs, self.engine
        resetting = [k for k in range(k_all) if self._autoreset[k] and self.autoreset_mode == AutoresetMode.NEXT_STEP]
        stepping = [k for k in range(k_all) if k not in resetting]
        weights = {}
        for k in stepping:  # every row is checked before any sub-env trains
            try:
                weights[k] = envs[k].checked_weights(*envs[k].action_to_weights(a[k]))
            except ValueError as exc:
                raise ValueError(f"actions row {k}: {exc}") from None
        pending = {}
        if stepping:
            filler = weights[stepping[0]]  # rows about to reset train on something; it is overwritten
            w_l = torch.as_tensor(np.stack([weights.get(k, filler)[0] for k in range(k_all)]), device=engine.device)
            w_f = torch.as_tensor(np.stack([weights.get(k, filler)[1] for k in range(k_all)]), device=engine.device)
            out, loss = run_iterations(engine, w_l, w_f, self.config.steps_per_action)
            for k in stepping:
                row = {name: value[k] for name, value in out.items()}
                pending[k] = envs[k].after_update(row, loss[k], *weights[k])
        ended = [k for k, p in pending.items() if p.terminated]
        final_obs = engine.observations() if ended else None  # an ended row's last observation: no next batch
        for k in resetting:
            envs[k].begin_reset(None)
        # Every row's next batch (a row that just ended gets one too: it is reset before any use).
        engine.forward()
        resets = {k: envs[k].reset_measurements() for k in resetting}
        obs = engine.observations()
        parts = [envs[k].step_parts(pending[k], (final_obs if k in ended else obs)[k]) if k in pending
                 else envs[k].reset_parts(resets[k], obs[k]) for k in range(k_all)]
        host = to_host([t for part in parts for t in part])
        rewards = np.zeros(k_all, dtype=np.float64)
        terminated = np.zeros(k_all, dtype=bool)
        truncated = np.zeros(k_all, dtype=bool)
        infos: List[dict] = []
        for k in range(k_all):
            h = host[3 * k:3 * k + 3]
            if k in pending:
                self._obs[k], rewards[k], terminated[k], truncated[k], info = envs[k].finish_step(pending[k], h)
            else:
                self._obs[k], info = envs[k].finish_reset(resets[k], h)
            infos.append(info)
        self._autoreset = terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated, infos

    @property
    def observations(self) -> np.ndarray:
        """The latest observation of every sub-env (K, ...)."""
        return self._obs.copy()

    def _seeds(self, seed) -> List[Optional[int]]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            return [check_seed(seed) + k for k in range(self.num_envs)]
        if not isinstance(seed, (list, tuple, np.ndarray)):
            raise ValueError(f"seed: expected None, an integer >= 0 or a list of {self.num_envs} (one per sub-env), "
                             f"got {type(seed).__name__} {str(seed)[:40]!r}")
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed: a list of seeds needs one per sub-env ({self.num_envs}), got {len(seeds)}")
        return [None if s is None else check_seed(s, f"seed[{k}]") for k, s in enumerate(seeds)]

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every sub-env's episode (its row of the batched engine and the env's own state), the
        pending autoresets and the latest observations."""
        return {"num_envs": self.num_envs, "autoreset": self._autoreset.tolist(), "obs": torch.from_numpy(self._obs.copy()),
                "envs": [{"engine": env.engine.state_dict(), "episode_over": env._episode_over, **env.host_state()}
                         for env in self.envs]}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_envs"]) != self.num_envs:
            raise ValueError(f"vector env state: saved with num_envs={state['num_envs']}, this env has {self.num_envs}")
        for env, s in zip(self.envs, state["envs"]):
            env.engine.load_state_dict(s["engine"])
        self.engine.reprepare()
        for env, s in zip(self.envs, state["envs"]):
            env.load_host_state(s)
            env._episode_over = bool(s["episode_over"])
        self._autoreset = np.asarray(state["autoreset"], dtype=bool)
        self._obs = state["obs"].numpy().copy()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        """Call (or read) `name` on every sub-env, as `SyncVectorEnv.call`."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple:
        return self.call(name)
