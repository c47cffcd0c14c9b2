"""The contracts between the env's parts and its users, as `typing.Protocol`s (structural: an
implementation needs no import of this module).

Data (`mtkd_env.data.build_dataset` returns a `Splits`):
    `Splits`       train/val/test of one dataset: `DatasetSplits` (in memory) or `StreamingSplits` (disk)
    `TrainLoader`  fixed-size training batches in a seeded order: `DeviceLoader`, `StreamingLoader`
    `EvalSet`      a validation or test split: `TensorEvalSet`, `StreamEvalSet`

Weighting policies (what `mtkd_env.episodes.run_episode` drives):
    `ActionPolicy` an agent: raw observation -> env action (`agents.policy.Policy`, SB3 style)
    `WeightPolicy` a policy that outputs teacher weights for `env.step_weights` (formula baselines,
                   `runtime.episodes.EqualWeights`)
Both declare `env_overrides`, the EnvConfig fields their env needs on top of the user's config.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

__all__ = ["Splits", "TrainLoader", "EvalSet", "ActionPolicy", "WeightPolicy"]

Tensor = Any
"""A `torch.Tensor` (not imported here: `import mtkd_env` stays free of torch)."""


@runtime_checkable
class EvalSet(Protocol):
    """A validation or test split. In-memory sets have `x` (N, ...) and `y` (N,) device tensors;
    streamed ones set both to None and are read through `batches`."""

    x: Optional[Tensor]
    y: Optional[Tensor]

    def __len__(self) -> int: ...

    def head(self, n: int) -> Tuple[Tensor, Tensor]:
        """The first `n` samples: x (n, ...), y (n,) on the device (the fixed probe batch)."""

    def batches(self, batch_size: int) -> Iterator[Tuple[Tensor, Tensor]]:
        """(x (b, ...), y (b,)) in order; the last batch may be smaller."""


@runtime_checkable
class TrainLoader(Protocol):
    """Fixed-size training batches whose order is a pure function of the `reset` seed; the last
    partial batch of an epoch is dropped. Under torch.distributed `batch_size` is the global batch
    and each rank gets its `local_batch` rows of it."""

    batch_size: int
    local_batch: int
    batches_per_epoch: int
    epoch: int

    def reset(self, seed: int) -> None: ...

    def next(self) -> Tuple[Tensor, Tensor, Tensor]:
        """x (b, ...), y (b,), dataset indices (b,) (with fixed views the views' rows), on the
        device; b = local_batch."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Splits(Protocol):
    """Train/val/test of one dataset (`name`, `num_classes`, `input_shape` (C, H, W))."""

    name: str
    num_classes: int

    @property
    def input_shape(self) -> tuple: ...

    def train_loader(self, batch_size: int, augment: bool, device: Any, labels: Optional[Tensor] = None,
                     rank: int = 0, world_size: int = 1) -> TrainLoader:
        """The training split on `device`; `labels` (N,) replaces the training labels (noisy teachers)."""

    def eval_set(self, split: str, device: Any) -> EvalSet:
        """The "val" or "test" split."""


@runtime_checkable
class ActionPolicy(Protocol):
    """An agent. Contract: build the env as `MultiTeacherKDEnv(user_config.replace(**env_overrides))`
    and call `env.step(predict(obs, deterministic=True)[0])` with the raw observation."""

    algo: str
    env_overrides: Mapping[str, Any]

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Optional[np.ndarray] = None,
                deterministic: bool = True) -> Tuple[np.ndarray, Any]: ...


@runtime_checkable
class WeightPolicy(Protocol):
    """A policy that sets teacher weights directly: `start_episode(env, seed)` after `env.reset(seed)`,
    then `env.step_weights(*weights(env))` every step. `weights` returns (w_logit, w_feat or None):
    (M,) or, for per-sample policies, (B, M) non-negative arrays."""

    algo: str
    env_overrides: Mapping[str, Any]

    def start_episode(self, env: Any, seed: int) -> None: ...

    def weights(self, env: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]: ...
