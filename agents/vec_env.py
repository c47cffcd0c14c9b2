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

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List, Optional

import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.runtime.errors import UserError, is_user_error

from .hyperparams import VEC_ENVS, check_n_envs

__all__ = ["VEC_ENVS", "SB3BatchedVecEnv", "ResumableMonitor", "SB3Envs", "check_n_envs", "env_layout"]


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
    each, since K processes with the default thread count oversubscribe the cores). With
    `error_file`, bad input in the worker (building, resetting or stepping the env) is written
    there as its one line and the worker ends quietly (see `_SubprocVecEnv`)."""

    def __init__(self, config: EnvConfig, single_thread: bool, error_file: Optional[str] = None) -> None:
        self.config, self.single_thread, self.error_file = config, single_thread, error_file

    def __call__(self) -> ResumableMonitor:
        from mtkd_env.env import MultiTeacherKDEnv

        if self.single_thread:
            torch.set_num_threads(1)
        if self.error_file is None:
            return ResumableMonitor(MultiTeacherKDEnv(self.config))
        with _reporting(self.error_file):
            return _ReportingMonitor(MultiTeacherKDEnv(self.config), self.error_file)


@contextmanager
def _reporting(error_file: str) -> Iterator[None]:
    """In a worker: a `UserError` (or an OS error of a user-given path) becomes its one line in
    `error_file` and a quiet exit (multiprocessing prints no traceback for `SystemExit`)."""
    try:
        yield
    except BaseException as exc:
        if not is_user_error(exc):
            raise
        from mtkd_env.runtime.cli import describe_error
        from mtkd_env.runtime.files import atomic_write_text

        atomic_write_text(error_file, describe_error(exc))
        raise SystemExit(2) from None


class _ReportingMonitor(ResumableMonitor):
    """A worker's monitored env whose bad-input errors go to the parent as one line."""

    def __init__(self, env, error_file: str) -> None:
        super().__init__(env)
        self._error_file = error_file

    def reset(self, **kwargs):
        with _reporting(self._error_file):
            return super().reset(**kwargs)

    def step(self, action):
        with _reporting(self._error_file):
            return super().step(action)

    def load_training_state(self, state: dict) -> None:
        with _reporting(self._error_file):
            super().load_training_state(state)


class WorkerInputError(UserError):
    """A `SubprocVecEnv` worker stopped on bad input (the user's config); its one line."""


class _Remote:
    """The parent's end of a worker pipe: a worker that died on bad input raises its one line
    (`WorkerInputError`) instead of `EOFError` / `BrokenPipeError` / `ConnectionResetError`."""

    def __init__(self, conn, owner: "_SubprocVecEnv") -> None:
        self.conn, self.owner = conn, owner

    def _call(self, name: str, *args):
        try:
            return getattr(self.conn, name)(*args)
        except (EOFError, OSError):
            reason = self.owner.worker_error()
            if reason is None:
                raise
            raise WorkerInputError(reason) from None

    def send(self, obj) -> None:
        self._call("send", obj)

    def recv(self):
        return self._call("recv")

    def close(self) -> None:
        self.conn.close()


class _SubprocVecEnv(SubprocVecEnv):
    """SB3's `SubprocVecEnv` whose workers report bad input (an unknown student, a missing teacher
    checkpoint, ...) as the same one-line error as the in-process layouts, instead of ~100 lines of
    worker tracebacks and the parent's `EOFError` / `ConnectionResetError`."""

    def __init__(self, config: EnvConfig, n_envs: int) -> None:
        self._error_dir = tempfile.mkdtemp(prefix="mtkd-subproc-")
        fns = [_MonitoredEnv(config, single_thread=True, error_file=str(Path(self._error_dir) / f"worker{k}"))
               for k in range(n_envs)]
        try:
            super().__init__(fns)
        except (EOFError, OSError):
            reason = self.worker_error()
            if reason is None:
                raise
            raise WorkerInputError(reason) from None
        self.remotes = [_Remote(r, self) for r in self.remotes]
        self.get_attr("render_mode")  # every worker has built its env (or stopped on bad input)

    def worker_error(self) -> Optional[str]:
        """The line of a worker that stopped on bad input (the others are ended), else None."""
        files = sorted(Path(self._error_dir).glob("worker*"))
        if not files:
            return None
        reason = files[0].read_text()
        for remote in getattr(self, "remotes", ()):
            remote.close()  # a worker that is still running ends on EOF
        for process in getattr(self, "processes", []):
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
        self.closed = True
        shutil.rmtree(self._error_dir, ignore_errors=True)
        return reason

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._error_dir, ignore_errors=True)


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
            self.venv = _SubprocVecEnv(config, n_envs)
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


def env_layout(hyperparams: dict) -> tuple:
    """(n_envs, vec_env) of these hyperparameters: vec_env defaults to "dummy" for one env (the
    plain DummyVecEnv) and "batched" for several."""
    n = hyperparams.get("n_envs", 1)
    return n, hyperparams.get("vec_env") or ("dummy" if n == 1 else "batched")
