"""Stable-Baselines3 algorithms (PPO, A2C, SAC, TD3) on `MultiTeacherKDEnv`, with resumable state.

The env is wrapped as rl-zoo3 does: `Monitor` -> `DummyVecEnv` -> optional `VecNormalize`
(`normalize` hyperparameter); with `n_envs` > 1 the sub-envs run as `vec_env` says
(`agents.vec_env`: batched in this process, subprocess workers, or in turn). `training_state()` captures what SB3's own `save` leaves out and a
bit-identical continuation needs: the env episode (student, optimiser, data position, RNG),
Monitor and VecNormalize accumulators, `_last_obs`, counters, the replay buffer and action noise.
Checkpoints are taken at rollout boundaries (`on_rollout_start`), where the rollout buffer is
empty, so nothing half-collected has to be saved. That state lives in SB3's private attributes
(`_last_obs`, `_n_updates`, `_episode_num`, ...), so setup.cfg bounds stable-baselines3 to the
versions tested (`<2.10`); a new version needs the resume tests (tests/agents/test_resume.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from mtkd_env import EnvConfig
from mtkd_env.config import ConfigError
from mtkd_env.runtime.errors import CheckpointError
from mtkd_env.runtime.files import atomic_path, why_unreadable

from .hyperparams import resolve_episode_steps, sb3_kwargs
from .modelfile import add_meta, read_meta
from .policy import Policy, interface_overrides
from .set_policy import is_set_policy, resolve_policy, set_policy_kwargs
from .vec_env import SB3Envs, check_n_envs, env_layout

__all__ = ["SB3_CLASSES", "SB3Agent", "SB3Policy", "load_sb3_policy"]


def _classes() -> Dict[str, type]:
    from stable_baselines3 import A2C, PPO, SAC, TD3

    # ppo-set / ppo-sample / ppo-credit: stock PPO with TeacherSetPolicy, shipped with their own hyperparameter files
    return {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ppo-set": PPO, "ppo-sample": PPO, "ppo-credit": PPO}


SB3_CLASSES = _classes


def _t(x: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if x is None else torch.from_numpy(np.array(x, copy=True))


def _n(x: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if x is None else x.numpy().copy()


def _scalar_t(v: Any) -> Any:
    """A numpy scalar (VecMonitor's episode returns) as a 0-d tensor, for weights-only loading."""
    return torch.from_numpy(np.asarray(v)) if isinstance(v, np.generic) else v


def _scalar_n(v: Any) -> Any:
    return v.numpy()[()] if isinstance(v, torch.Tensor) else v


def _rms_state(rms) -> dict:
    return {"mean": _t(np.asarray(rms.mean)), "var": _t(np.asarray(rms.var)), "count": float(rms.count)}


def _load_rms(rms, state: dict) -> None:
    rms.mean = _n(state["mean"]) if np.ndim(rms.mean) else np.float64(state["mean"].item())
    rms.var = _n(state["var"]) if np.ndim(rms.var) else np.float64(state["var"].item())
    rms.count = state["count"]


class SB3Agent:
    """An SB3 model and its wrapped `MultiTeacherKDEnv`, built from plain hyperparameters."""

    def __init__(self, algo: str, env_config: EnvConfig, hyperparams: dict, seed: int, device: str) -> None:
        from stable_baselines3.common.vec_env import VecNormalize

        from mtkd_env.runtime.distributed import context as dist_context

        policy_name = hyperparams.get("policy", "MlpPolicy")
        policy = resolve_policy(policy_name, algo)
        if env_config.granularity != "teacher" and not is_set_policy(policy_name):
            raise ConfigError(f"--algo {algo}: {policy_name} acts on the flat teacher-granularity env, got "
                              f"granularity={env_config.granularity!r} (use policy: TeacherSetPolicy, or mtkd-rl "
                              "or mtkd-rl-pg, for per-sample weights)")
        self.algo = algo
        self.hyperparams = dict(hyperparams)
        n_envs, kind = env_layout(hyperparams)
        check_n_envs(n_envs, kind, dist_context().enabled)
        self.envs = SB3Envs(env_config, n_envs, kind)
        self.env = self.envs.facts
        """The first sub-env (for "subproc": its spaces, config and teacher names)."""
        venv = self.envs.venv
        self.vecnorm: Optional[VecNormalize] = None
        normalize = hyperparams.get("normalize", False)
        if normalize:
            kwargs = {} if normalize is True else dict(normalize)
            kwargs.setdefault("gamma", hyperparams.get("gamma", 0.99))
            self.vecnorm = venv = VecNormalize(venv, **kwargs)
        self.venv = venv
        cls = SB3_CLASSES()[algo]
        steps = getattr(self.env, "total_steps", None) or venv.get_attr("total_steps", [0])[0]
        kwargs = sb3_kwargs(resolve_episode_steps(hyperparams, steps), int(np.prod(self.env.action_space.shape)))
        self.set_policy: Optional[dict] = None
        if is_set_policy(policy_name):
            sample_layout = getattr(self.env, "sample_layout", None)
            if sample_layout is None and env_config.granularity == "sample":
                sample_layout = venv.get_attr("sample_layout", [0])[0]
            self.set_policy = set_policy_kwargs(self.env.config, sample_layout)
            kwargs["policy_kwargs"] = {**kwargs.get("policy_kwargs", {}), **self.set_policy}
        if n_envs > 1 and kwargs.get("action_noise") is not None:  # one noise process per env, saved per env
            from stable_baselines3.common.noise import VectorizedActionNoise

            kwargs["action_noise"] = VectorizedActionNoise(kwargs["action_noise"], n_envs)
        try:
            self.model = cls(policy, venv, seed=seed, device=device, verbose=0, **kwargs)
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            raise ConfigError(f"{algo} could not be built with these hyperparameters: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._noise_drawn_at: Optional[int] = None
        if getattr(self.model, "use_sde", False):
            self._track_noise_draws()

    def _track_noise_draws(self) -> None:
        """Remember the step of the last gSDE noise draw. SB3 draws at the start of every rollout,
        just before the callback's `on_rollout_start` where checkpoints are taken; a checkpoint
        taken there holds noise that the rollout has not used yet (see `load_training_state`)."""
        policy, draw = self.model.policy, self.model.policy.reset_noise

        def reset_noise(n_envs: int = 1) -> None:
            draw(n_envs)
            self._noise_drawn_at = self.model.num_timesteps

        policy.reset_noise = reset_noise
    # --- training ----------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.model.num_timesteps

    def learn(self, total_timesteps: int, callback: Any, reset_num_timesteps: bool) -> None:
        self.model.learn(total_timesteps, callback=callback, log_interval=1, reset_num_timesteps=reset_num_timesteps)

    def raw_rewards(self, locals_: dict) -> np.ndarray:
        """Every sub-env's reward of the last step, (n_envs,) (VecNormalize hands SB3 scaled ones)."""
        if self.vecnorm is not None:
            return np.asarray(self.vecnorm.get_original_reward(), dtype=np.float64).reshape(-1)
        return np.asarray(locals_["rewards"], dtype=np.float64).reshape(-1)

    # --- resumable state ---------------------------------------------------------------------
    def training_state(self) -> dict:
        m = self.model
        _, torch_vars = m._get_torch_save_params()
        from stable_baselines3.common.save_util import recursive_getattr

        state: Dict[str, Any] = {
            "params": m.get_parameters(),
            "torch_vars": {name: recursive_getattr(m, name).detach().clone() for name in torch_vars},
            "num_timesteps": m.num_timesteps, "n_updates": m._n_updates, "episode_num": m._episode_num,
            "progress_remaining": m._current_progress_remaining,
            "last_obs": _t(m._last_obs), "last_episode_starts": _t(m._last_episode_starts),
            "last_original_obs": _t(getattr(m, "_last_original_obs", None)),
            "ep_info_buffer": [{k: _scalar_t(v) for k, v in e.items()} for e in (m.ep_info_buffer or [])],
            "ep_success_buffer": list(m.ep_success_buffer or []),
            "vecnorm": None, "replay_buffer": None, "action_noise": None, "sde": None,
        }
        envs = self.envs.state_dict()
        if self.envs.n_envs == 1 and self.envs.kind == "dummy":  # the one-env layout of earlier checkpoints
            state.update(envs["envs"][0])
        else:
            state["vec_envs"] = envs
        if self.vecnorm is not None:
            v = self.vecnorm
            state["vecnorm"] = {"obs_rms": _rms_state(v.obs_rms) if v.norm_obs else None,
                                "ret_rms": _rms_state(v.ret_rms),
                                "returns": _t(v.returns), "old_obs": _t(getattr(v, "old_obs", None)),
                                "old_reward": _t(v.old_reward)}
        rb = getattr(m, "replay_buffer", None)
        if rb is not None:
            n = rb.buffer_size if rb.full else rb.pos
            fields = ["observations", "actions", "rewards", "dones", "timeouts"]
            if not rb.optimize_memory_usage:
                fields.append("next_observations")
            state["replay_buffer"] = {"pos": rb.pos, "full": rb.full, **{f: _t(getattr(rb, f)[:n]) for f in fields}}
        if self._noise_drawn_at is not None:
            dist = m.policy.action_dist
            state["sde"] = {"exploration_mat": dist.exploration_mat.detach().clone(),
                            "exploration_matrices": dist.exploration_matrices.detach().clone(),
                            "unused": self._noise_drawn_at == m.num_timesteps}
        noise = getattr(m, "action_noise", None)
        if noise is not None and hasattr(noise, "noise_prev"):
            state["action_noise"] = _t(noise.noise_prev)
        elif noise is not None and hasattr(noise, "noises") and hasattr(noise.noises[0], "noise_prev"):
            state["action_noise"] = [_t(n.noise_prev) for n in noise.noises]
        return state

    def load_training_state(self, state: dict) -> None:
        m = self.model
        m.set_parameters(state["params"], exact_match=True, device=m.device)
        from stable_baselines3.common.save_util import recursive_getattr

        with torch.no_grad():
            for name, value in state["torch_vars"].items():
                recursive_getattr(m, name).copy_(value)
        m.num_timesteps, m._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
        m._episode_num, m._current_progress_remaining = int(state["episode_num"]), float(state["progress_remaining"])
        m._last_obs, m._last_episode_starts = _n(state["last_obs"]), _n(state["last_episode_starts"])
        if state["last_original_obs"] is not None:
            m._last_original_obs = _n(state["last_original_obs"])
        from collections import deque

        m.ep_info_buffer = deque([{k: _scalar_n(v) for k, v in e.items()} for e in state["ep_info_buffer"]],
                                 maxlen=m._stats_window_size)
        m.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=m._stats_window_size)
        self.envs.load_state_dict(state["vec_envs"] if "vec_envs" in state else
                                  {"kind": "dummy", "envs": [{"env": state["env"], "monitor": state["monitor"]}]})
        if state["vecnorm"] is not None:
            v, vs = self.vecnorm, state["vecnorm"]
            if vs["obs_rms"] is not None:
                _load_rms(v.obs_rms, vs["obs_rms"])
            _load_rms(v.ret_rms, vs["ret_rms"])
            v.returns, v.old_reward = _n(vs["returns"]), _n(vs["old_reward"])
            if vs["old_obs"] is not None:
                v.old_obs = _n(vs["old_obs"])
        if state["replay_buffer"] is not None:
            rb, rs = m.replay_buffer, state["replay_buffer"]
            for key, value in rs.items():
                if key in ("pos", "full"):
                    continue
                getattr(rb, key)[:len(value)] = value.numpy()
            rb.pos, rb.full = int(rs["pos"]), bool(rs["full"])
        if state["action_noise"] is not None:
            self._restore_action_noise(state["action_noise"])
        if state.get("sde") is not None:
            self._restore_noise(state["sde"])

    def _restore_action_noise(self, saved) -> None:
        """Put back the Ornstein-Uhlenbeck state (per env: a list). `learn` resets the action
        noise when it starts, so the saved state is put back by that first reset instead."""
        noise = self.model.action_noise

        def put_back() -> None:
            targets = noise.noises if isinstance(saved, list) else [noise]
            for target, prev in zip(targets, saved if isinstance(saved, list) else [saved]):
                target.noise_prev = _n(prev)

        def restore_once(*args, **kwargs) -> None:
            del noise.reset  # the class's own reset from now on
            put_back()

        put_back()
        noise.reset = restore_once

    def _restore_noise(self, sde: dict) -> None:
        """Put back the saved gSDE noise. When the checkpoint was taken between a draw and the
        rollout that uses it, the resumed `learn` starts with that rollout and SB3 would draw again
        (and the saved RNG state is already past the first draw): the first draw after a resume
        then restores the saved noise instead, so the run continues bit-identically."""
        dist, policy = self.model.policy.action_dist, self.model.policy
        dist.exploration_mat = sde["exploration_mat"].to(self.model.device)
        dist.exploration_matrices = sde["exploration_matrices"].to(self.model.device)
        self._noise_drawn_at = self.model.num_timesteps if sde["unused"] else None
        if sde["unused"]:
            tracked = policy.reset_noise

            def restore_once(n_envs: int = 1) -> None:
                policy.reset_noise = tracked

            policy.reset_noise = restore_once

    # --- model file --------------------------------------------------------------------------
    def policy_meta(self) -> dict:
        """What `SB3Policy` needs besides the weights: spaces, hyperparameters, obs normalisation."""
        meta = {"env_overrides": interface_overrides(self.env.config),
                "observation_space": _box_meta(self.env.observation_space),
                "action_space": _box_meta(self.env.action_space), "obs_norm": None, "set_policy": self.set_policy}
        v = self.vecnorm
        if v is not None and v.norm_obs:
            meta["obs_norm"] = {"mean": np.asarray(v.obs_rms.mean).tolist(), "var": np.asarray(v.obs_rms.var).tolist(),
                                "clip_obs": float(v.clip_obs), "epsilon": float(v.epsilon)}
        return meta

    def save_model(self, path: Path, meta: dict) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp)  # the temp name has a suffix, so SB3 does not append ".zip"
            add_meta(tmp, {**meta, **self.policy_meta()})


def _box_meta(space: spaces.Box) -> dict:
    return {"low": space.low.tolist(), "high": space.high.tolist(), "dtype": str(space.dtype)}


def _box(meta: dict) -> spaces.Box:
    return spaces.Box(np.array(meta["low"], dtype=meta["dtype"]), np.array(meta["high"], dtype=meta["dtype"]),
                      dtype=meta["dtype"])


class _SpacesOnly(gym.Env):
    """A stand-in env that only carries spaces, to rebuild a saved model for inference."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Box) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):  # pragma: no cover - never stepped
        raise RuntimeError("inference-only env")

    def step(self, action):  # pragma: no cover - never stepped
        raise RuntimeError("inference-only env")


class SB3Policy(Policy):
    """A saved SB3 model with the observation normalisation of its training run applied in `predict`."""

    def __init__(self, model: Any, meta: dict) -> None:
        super().__init__(meta["algo"], meta["env_overrides"], meta)
        self.model = model
        norm = meta.get("obs_norm")
        self._norm: Optional[Tuple[np.ndarray, np.ndarray, float]] = None
        if norm:
            self._norm = (np.array(norm["mean"], dtype=np.float64),
                          np.sqrt(np.array(norm["var"], dtype=np.float64) + norm["epsilon"]), float(norm["clip_obs"]))

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """VecNormalize's transform with the statistics frozen at the end of training."""
        if self._norm is None:
            return np.asarray(obs, dtype=np.float32)
        mean, std, clip = self._norm
        return np.clip((np.asarray(obs) - mean) / std, -clip, clip).astype(np.float32)

    @property
    def pool_free(self) -> bool:
        """A `TeacherSetPolicy` without observation normalisation acts on any pool size (and, per
        sample, on any batch size); its `predict` bypasses SB3's shape check."""
        return bool(self.meta.get("set_policy")) and self._norm is None

    def predict(self, obs, state=None, episode_start=None, deterministic: bool = True):
        if self.pool_free:
            return self.model.policy.act(obs, deterministic=deterministic), state
        return self.model.predict(self.normalize(obs), state=state, episode_start=episode_start,
                                  deterministic=deterministic)

    def trained_shapes(self):
        obs, act = np.shape(self.meta["observation_space"]["low"]), np.shape(self.meta["action_space"]["low"])
        if self.pool_free:
            return (None,) * len(obs), (None,) * len(act)
        return obs, act


def load_sb3_policy(path: Path, meta: Optional[dict] = None, device: str = "cpu") -> SB3Policy:
    """Rebuild the model from its metadata and load its weights without unpickling."""
    meta = meta or read_meta(path)
    algo = meta["algo"]
    hp = dict(meta["hyperparams"])
    env = _SpacesOnly(_box(meta["observation_space"]), _box(meta["action_space"]))
    # inference only: the rollout and minibatch sizes play no part (one placeholder for both, so that
    # SB3 does not warn about a minibatch that does not divide the rollout)
    kwargs = sb3_kwargs(resolve_episode_steps(hp, 64), int(np.prod(env.action_space.shape)))
    if "n_steps" in kwargs:  # on-policy (A2C has no minibatch)
        kwargs.update({k: 64 for k in ("n_steps", "batch_size") if k in kwargs})
    if meta.get("set_policy"):
        kwargs["policy_kwargs"] = {**kwargs.get("policy_kwargs", {}), **meta["set_policy"]}
    if "buffer_size" in inspect.signature(SB3_CLASSES()[algo].__init__).parameters:
        kwargs["buffer_size"] = 1  # inference only: no replay memory
        kwargs.pop("learning_starts", None)
    with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the caller's RNG alone
        model = SB3_CLASSES()[algo](resolve_policy(hp.get("policy", "MlpPolicy"), algo), env, device=device, verbose=0, **kwargs)
    try:
        model.set_parameters(str(path), exact_match=True, device=device)
    except Exception as exc:  # SB3 reads each member with torch.load(weights_only=True)
        raise CheckpointError(f"model file {str(path)!r} could not be loaded as weights-only {algo} parameters: "
                              f"{why_unreadable(exc)}") from None
    return SB3Policy(model, meta)
