"""The Stable-Baselines3 VecEnv of an SB3 agent: `n_envs` sub-envs of MultiTeacherKD-v0, resumable.

Three ways to run K > 1 sub-envs (`--vec-env`, hyperparameter `vec_env`):

- "batched": `mtkd_env.vector_env.MultiTeacherKDVectorEnv` (K students trained in this process,
  teachers loaded once) through `SB3BatchedVecEnv`, which gives it SB3's VecEnv semantics
  (same-step reset, `terminal_observation` and `TimeLimit.truncated` in the infos), then
  SB3's `VecMonitor`;
- "subproc": SB3's `SubprocVecEnv` of `Monitor`-wrapped envs, one worker process each, every worker
  with one torch thread;
- "dummy": SB3's `DummyVecEnv` of `Monitor`-wrapped envs, stepped in turn in this process (the
  layout of K = 1).

Sub-env k is reset with seed s + k at the start (SB3's `VecEnv.seed`), in every layout, so the
three train the same students. `SB3Envs.state_dict()` holds what a bit-identical resume needs of
them: every sub-env's episode and the Monitor accumulators.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Optional

import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.runtime.errors import did_you_mean

__all__ = ["VEC_ENVS", "SB3BatchedVecEnv", "ResumableMonitor", "SB3Envs", "check_n_envs", "env_layout"]

VEC_ENVS = ("batched", "subproc", "dummy")


class ResumableMonitor(Monitor):
    """SB3's `Monitor` whose accumulators and wrapped env's episode can be saved and restored
    (also from a `SubprocVecEnv` worker, through `env_method`)."""

    def training_state(self) -> dict:
        return {"env": self.env.unwrapped.state_dict(),
                "monitor": {"rewards": list(self.rewards), "needs_reset": self.needs_reset,
                            "episode_returns": list(self.episode_returns),
                            "episode_lengths": list(self.episode_lengths),
                            "episode_times": list(self.episode_times), "total_steps": self.total_steps}}

    def load_training_state(self, state: dict) -> None:
        self.env.unwrapped.load_state_dict(state["env"])
        mon = state["monitor"]
        self.rewards, self.needs_reset = list(mon["rewards"]), bool(mon["needs_reset"])
        self.episode_returns, self.episode_lengths = list(mon["episode_returns"]), list(mon["episode_lengths"])
        self.episode_times, self.total_steps = list(mon["episode_times"]), int(mon["total_steps"])


class _MonitoredEnv:
    """Picklable factory of one monitored sub-env (for `SubprocVecEnv` workers: one torch thread
    each, since K processes with the default thread count oversubscribe the cores)."""

    def __init__(self, config: EnvConfig, single_thread: bool) -> None:
        self.config, self.single_thread = config, single_thread

    def __call__(self) -> ResumableMonitor:
        from mtkd_env.env import MultiTeacherKDEnv

        if self.single_thread:
            torch.set_num_threads(1)
        return ResumableMonitor(MultiTeacherKDEnv(self.config))


class SB3BatchedVecEnv(VecEnv):
    """SB3's VecEnv API over `MultiTeacherKDVectorEnv` (built with autoreset DISABLED): a sub-env
    that ends is reset in the same step; its last observation goes to
    `info["terminal_observation"]`, and `info["TimeLimit.truncated"]` says whether it was cut by
    a time limit (never: the env's horizon is in its observation, so it terminates)."""

    def __init__(self, vector) -> None:
        from gymnasium.vector import AutoresetMode

        if vector.autoreset_mode != AutoresetMode.DISABLED:
            raise ValueError("SB3BatchedVecEnv resets sub-envs itself: build the vector env with autoreset_mode='Disabled'")
        self.vector = vector
        super().__init__(vector.num_envs, vector.single_observation_space, vector.single_action_space)
        self._actions: Optional[np.ndarray] = None

    def reset(self) -> np.ndarray:
        self.reset_infos = self.vector.reset_rows(list(range(self.num_envs)), list(self._seeds))
        self._reset_seeds()
        self._reset_options()
        return self.vector.observations

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.vector.step_rows(self._actions)
        dones = terminated | truncated
        for k, info in enumerate(infos):
            info["TimeLimit.truncated"] = bool(truncated[k] and not terminated[k])
        ended = [int(k) for k in np.flatnonzero(dones)]
        if ended:
            for k in ended:
                infos[k]["terminal_observation"] = obs[k]
            for k, info in zip(ended, self.vector.reset_rows(ended, [None] * len(ended))):
                self.reset_infos[k] = info
            obs = self.vector.observations
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.vector.close()

    def _targets(self, indices) -> List[Any]:
        return [self.vector.envs[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices=None) -> List[Any]:
        return [getattr(env, attr_name) for env in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for env in self._targets(indices):
            setattr(env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> List[Any]:
        return [getattr(env, method_name)(*method_args, **method_kwargs) for env in self._targets(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices=None) -> List[bool]:
        return [False for _ in self._get_indices(indices)]


class SB3Envs:
    """The VecEnv an SB3 agent trains on (`venv`, before VecNormalize), and `facts`: the first
    sub-env, or for "subproc" its spaces, config and teacher names."""

    def __init__(self, config: EnvConfig, n_envs: int, kind: str) -> None:
        from mtkd_env.env import MultiTeacherKDEnv
        from mtkd_env.vector_env import MultiTeacherKDVectorEnv

        if kind not in VEC_ENVS:
            raise ConfigError(f"vec_env: expected one of {list(VEC_ENVS)}, got {kind!r}")
        self.n_envs, self.kind = n_envs, kind
        self.vector = None
        self.monitors: List[ResumableMonitor] = []
        if kind == "batched":
            self.vector = MultiTeacherKDVectorEnv(n_envs, config, autoreset_mode="Disabled")
            self.venv: VecEnv = VecMonitor(SB3BatchedVecEnv(self.vector))
            self.facts: Any = self.vector.envs[0]
        elif kind == "dummy":
            self.monitors = [ResumableMonitor(MultiTeacherKDEnv(config)) for _ in range(n_envs)]
            self.venv = DummyVecEnv([lambda m=m: m for m in self.monitors])
            self.facts = self.monitors[0].env
        else:
            self.venv = SubprocVecEnv([_MonitoredEnv(config, single_thread=True) for _ in range(n_envs)])
            names, cfg = self.venv.get_attr("teacher_names", [0])[0], self.venv.get_attr("config", [0])[0]
            self.facts = SimpleNamespace(teacher_names=names, config=cfg, observation_space=self.venv.observation_space,
                                         action_space=self.venv.action_space)

    def state_dict(self) -> dict:
        if self.vector is not None:
            mon = self.venv
            return {"kind": self.kind, "vector": self.vector.state_dict(),
                    "vec_monitor": {"episode_returns": torch.from_numpy(mon.episode_returns.copy()),
                                    "episode_lengths": torch.from_numpy(mon.episode_lengths.copy()),
                                    "episode_count": int(mon.episode_count)}}
        return {"kind": self.kind, "envs": list(self.venv.env_method("training_state"))}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind or self._count(state) != self.n_envs:
            raise ConfigError(f"checkpoint: its envs ({state['kind']}, {self._count(state)}) differ from this run's "
                              f"({self.kind}, {self.n_envs})")
        if self.vector is not None:
            self.vector.load_state_dict(state["vector"])
            mon, saved = self.venv, state["vec_monitor"]
            mon.episode_returns = saved["episode_returns"].numpy().copy()
            mon.episode_lengths = saved["episode_lengths"].numpy().copy()
            mon.episode_count = int(saved["episode_count"])
            return
        for k, env_state in enumerate(state["envs"]):
            self.venv.env_method("load_training_state", env_state, indices=[k])

    @staticmethod
    def _count(state: dict) -> int:
        return int(state["vector"]["num_envs"]) if "vector" in state else len(state["envs"])

    def close(self) -> None:
        self.venv.close()


def check_n_envs(n_envs: Any, vec_env: Optional[str], distributed: bool) -> None:
    """One-line `ConfigError` for an invalid `n_envs` / `vec_env` pair."""
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ConfigError(f"n_envs: expected an integer >= 1, got {n_envs!r}")
    if vec_env is not None and vec_env not in VEC_ENVS:
        raise ConfigError(f"vec_env: expected one of {list(VEC_ENVS)}, got {vec_env!r}"
                          + did_you_mean([vec_env], VEC_ENVS))
    if n_envs > 1 and distributed:
        raise ConfigError("n_envs: under torchrun every rank distils one student; use n_envs 1 (or no torchrun "
                          "and --n-envs K)")


def env_layout(hyperparams: dict) -> tuple:
    """(n_envs, vec_env) of these hyperparameters: vec_env defaults to "dummy" for one env (the
    plain DummyVecEnv) and "batched" for several."""
    n = hyperparams.get("n_envs", 1)
    return n, hyperparams.get("vec_env") or ("dummy" if n == 1 else "batched")
