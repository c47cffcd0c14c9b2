"""One env step of each weighting method as it runs in training, for `benchmarks.step_overhead`.

`METHODS[name]` gives the env overrides the method needs and a builder `(env, seed) -> step()`:

- "ca-mkd": the formula policy, logit and feature confidences (teacher heads on the projected
  student maps), through `env.step_weights`;
- "mmkd": the MMKD policy, weight networks every step and its meta step (3 unrolled virtual steps,
  second-order backward) after every 5th, through `env.step_weights`;
- "mtkd-rl", "mtkd-rl-pg", "rmts": the agent's training step (`OnlineAgent._step`: its forward,
  the env step, buffering, and the update when it is due — MTKD-RL at epoch ends, RMTS every step);
- "ppo": SB3 PPO's policy forward (sampled action) and the env step; PPO's rollout-buffer
  updates are not included;
- "ppo-shipped": the same with the env settings of the shipped `ppo.yml` (`env_kwargs`: the
  `twin_val_loss` reward, whose AVER twin student is trained every step and validated every
  `reward_interval` steps, and the teacher-statistics observation): the price of the twin.

Every other env uses the benchmark's reward ("neg_loss", which measures nothing extra), so those
rows differ only by the method.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from mtkd_env.env import MultiTeacherKDEnv

__all__ = ["METHODS", "method_names"]

StepFn = Callable[[], None]


def _policy_steps(name: str) -> Tuple[dict, Callable[[MultiTeacherKDEnv, int], StepFn]]:
    from baselines import make_policy

    def build(env: MultiTeacherKDEnv, seed: int) -> StepFn:
        policy = make_policy(name, seed=seed)
        env.reset(seed=seed)
        policy.bind(env)
        policy.reset(seed)

        def step() -> None:
            *_, terminated, _, _ = env.step_weights(*policy.act())
            if terminated:
                env.reset()
                policy.reset(seed)

        return step

    return dict(make_policy(name).env_overrides), build


def _agent_steps(algo: str) -> Tuple[dict, Callable[[MultiTeacherKDEnv, int], StepFn]]:
    from agents.algos import get_spec

    def build(env: MultiTeacherKDEnv, seed: int) -> StepFn:
        if algo == "rmts":
            from agents.rmts import RMTS

            agent = RMTS(env, seed=seed, device=env.engine.device)
        else:
            from agents.mtkd_rl import MTKDRL, MTKDRLConfig

            agent = MTKDRL(env, "code" if algo == "mtkd-rl" else "pg", MTKDRLConfig(warmup=False), seed=seed,
                           device=env.engine.device)
        state = {"obs": env.reset(seed=seed)[0]}

        def step() -> None:
            obs, _, terminated, _, _ = agent._step(state["obs"])
            state["obs"] = env.reset()[0] if terminated else obs

        return step

    return dict(get_spec(algo).env_overrides), build


def _ppo_steps(shipped_env: bool = False) -> Tuple[dict, Callable[[MultiTeacherKDEnv, int], StepFn]]:
    def build(env: MultiTeacherKDEnv, seed: int) -> StepFn:
        from stable_baselines3 import PPO

        model = PPO("MlpPolicy", env, seed=seed, device="cpu" if env.engine.device.type == "cpu" else "auto")
        state = {"obs": env.reset(seed=seed)[0]}

        def step() -> None:
            action = model.predict(state["obs"], deterministic=False)[0]
            obs, _, terminated, _, _ = env.step(np.asarray(action, dtype=np.float32))
            state["obs"] = env.reset()[0] if terminated else obs

        return step

    if not shipped_env:
        return {}, build
    from agents.hyperparams import default_hyperparams

    return dict(default_hyperparams("ppo").get("env_kwargs", {})), build


METHODS: Dict[str, Tuple[dict, Callable[[MultiTeacherKDEnv, int], StepFn]]] = {
    "ca-mkd": _policy_steps("ca-mkd"),
    "mmkd": _policy_steps("mmkd"),
    "mtkd-rl": _agent_steps("mtkd-rl"),
    "mtkd-rl-pg": _agent_steps("mtkd-rl-pg"),
    "rmts": _agent_steps("rmts"),
    "ppo": _ppo_steps(),
    "ppo-shipped": _ppo_steps(shipped_env=True),
}
"""method -> (env overrides, builder of its step function)."""


def method_names() -> list:
    return list(METHODS)
