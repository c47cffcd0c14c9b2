"""Formula baselines as policies bound to a `MultiTeacherKDEnv`, usable wherever an agent is.

A policy reads the env's prepared batch (`env.engine.batch`), computes weights with its function
from `baselines.weights`, and either

- `act()` -> (w_logit, w_feat) numpy weights for `env.step_weights` (exact; what
  `baselines.compare` uses; `start_episode` + `weights(env)` are the same as a
  `mtkd_env.protocols.WeightPolicy`, on the global batch under torch.distributed), or
- `predict(obs, deterministic=True)` -> (action, state), the SB3 interface: the action is
  `env.weights_to_action(w_logit, w_feat)`, exact under `action_transform="linear"` and up to the
  transform's clip for "softmax" (a one-hot weight becomes about 0.96 / 0.02 / 0.02 at
  `action_temperature` 0.5).

Like an agent, each policy has `.algo` and `.env_overrides` (EnvConfig fields its env needs on top of
the user's config): per-sample methods (EBKD, CA-MKD) need `granularity="sample"`, and no-kd sets
`kd_alpha = feat_beta = 0` so that the loss is CE alone whatever the action. Feature weights equal
the logit weights for every formula but CA-MKD, whose feature confidences read the projected
student maps through each teacher's classifier head (`feature_logits`, `feature_weights`; its env
keeps the feature maps, `keep_feature_maps=True`).

Dense tasks (`EnvConfig.task` segmentation or detection) use the same policies on the task's
per-image statistics (`FormulaPolicy.image_weights`): EBKD on each teacher's mean entropy per
image, CA-MKD on its CE against the ground truth per image (feature weights = logit weights).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type

import numpy as np
import torch

from mtkd_env.runtime.errors import ConfigError, did_you_mean
from mtkd_env import models

from . import weights as W

__all__ = ["FormulaPolicy", "POLICIES", "register_policy", "make_policy", "policy_names", "choice_weights", "Oracle", "BestConstant"]

POLICIES: Dict[str, Type["FormulaPolicy"]] = {}


def register_policy(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.algo = name
        POLICIES[name] = cls
        return cls

    return deco


def policy_names() -> list:
    return sorted(POLICIES)


def make_policy(name: str, env=None, *, seed: int = 0, **options: Any) -> "FormulaPolicy":
    """Build formula policy `name` (optionally bound to `env`); `options` go to its weight function
    (e.g. `normalization="reference"`, `cap=0.5`, `concentration=0.3`)."""
    if name not in POLICIES:
        raise ConfigError(f"unknown formula policy {name!r}{did_you_mean([name], POLICIES)}; known formula policies: "
                          f"{policy_names()}")
    return POLICIES[name](env, seed=seed, **options)


class FormulaPolicy:
    """Base class: subclasses set `weight_fn`, `per_sample` and may add function arguments."""

    algo: ClassVar[str] = ""
    weight_fn: ClassVar[Callable[..., torch.Tensor]]
    per_sample: ClassVar[bool] = False
    """True: weights differ per sample, so the env must use `granularity="sample"`."""
    options_allowed: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, env=None, *, seed: int = 0, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options_allowed))
        if unknown:
            raise ConfigError(f"policy {self.algo!r}: unknown option(s) {unknown}; expected "
                             f"{list(self.options_allowed) or 'none'}")
        self.options = options
        self.env = None
        self.reset(seed)
        if env is not None:
            self.bind(env)

    # --- agent interface -------------------------------------------------------------------
    @property
    def env_overrides(self) -> Dict[str, Any]:
        """EnvConfig fields this policy's env needs on top of the user's config."""
        return {"granularity": "sample"} if self.per_sample else {}

    def bind(self, env) -> "FormulaPolicy":
        """Attach to `env`; per-sample policies refuse a teacher-granularity env."""
        for key, value in self.env_overrides.items():
            if getattr(env.config, key) != value:
                raise ValueError(f"policy {self.algo!r} needs an env with {key}={value!r} (got "
                                 f"{getattr(env.config, key)!r}); build it from "
                                 f"config.replace(**policy.env_overrides)")
        self.env = env
        return self

    def reset(self, seed: int) -> None:
        """Re-seed per-episode randomness (only `random` has any)."""
        self.seed = int(seed)

    def start_episode(self, env, seed: int) -> None:
        """Bind to `env` (just reset with `seed`) and re-seed: the `WeightPolicy` start of an episode."""
        self.bind(env)
        self.reset(seed)

    def weights(self, env) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """`act()`, on the global batch when the env is distributed.

        Under torch.distributed each rank holds b = B / W rows of the batch. Per-sample formulas (EBKD,
        CA-MKD) must return all B rows (`env.step_weights` applies rank 0's array on every rank and each
        rank takes its own rows) and batch-level ones (AEKD) average over the whole batch, so the
        formula reads the rows of every rank, gathered in rank order: exactly the 1-process batch.
        Gathered: teacher logits (M, B, C), labels (B,) and student logits (B, C), what the weight
        functions read, and the policy's `feature_logits` (M, B, C) when it has separate feature
        weights. Returns (w_logit, w_feat): (B, M) for per-sample policies, else (M,); w_feat None
        means the logit weights.
        """
        ctx = env.dist
        if not ctx.enabled:
            return self.act()
        if self.env is not env:
            raise RuntimeError(f"policy {self.algo!r} is not bound to this env; call bind(env) first")
        batch = env.engine.batch
        whole = SimpleNamespace(
            teacher_logits=ctx.gather_rows(batch.teacher_logits.transpose(0, 1)).transpose(0, 1),
            y=ctx.gather_rows(batch.y), student_logits=ctx.gather_rows(batch.student_logits.detach()))
        w = self.batch_weights(whole)
        feature = self.feature_logits(batch)
        w_feat = None
        if feature is not None:
            w_feat = self.feature_weights(ctx.gather_rows(feature.transpose(0, 1)).transpose(0, 1), whole.y)
            w_feat = w_feat.cpu().numpy()
        return (w if self.per_sample else w[0]).cpu().numpy(), w_feat

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> Tuple[np.ndarray, Any]:
        """SB3-style: the action for the env's prepared batch (which `obs` describes)."""
        w_logit, w_feat = self.act()
        return self.env.weights_to_action(w_logit, w_feat), state

    # --- weights ---------------------------------------------------------------------------
    def function_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of `weight_fn` beyond the three tensors."""
        return dict(self.options)

    def batch_weights(self, batch) -> torch.Tensor:
        """(B, M) weights for a `mtkd_env.engine.Batch`; a dense task's batch (targets more than one
        label per image) goes to `image_weights`."""
        if batch.y.dim() != 1:
            return self.image_weights(batch)
        return type(self).weight_fn(batch.teacher_logits, batch.y, batch.student_logits.detach(),
                                    **self.function_kwargs())

    def image_weights(self, batch) -> torch.Tensor:
        """(B, M) weights for a dense task's batch (segmentation, detection), from its per-image
        statistics. The formulas that read only the shapes and the validation metric (AVER,
        no-kd, best, drop-worst, random) take the per-image teacher logits (M, B, C); EBKD and
        CA-MKD override this with their per-image confidences."""
        return type(self).weight_fn(batch.teacher_logits, None, None, **self.function_kwargs())

    def feature_logits(self, batch) -> Optional[torch.Tensor]:
        """(M, b, C) per-sample inputs of separate feature weights for this rank's rows of
        `batch`, or None when the feature weights are the logit weights (the default)."""
        return None

    def feature_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, M) feature weights from `feature_logits` (gathered over ranks) and labels (B,)."""
        raise NotImplementedError(f"policy {self.algo!r} has no separate feature weights")

    def act(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(w_logit, w_feat) for `env.step_weights`: (B, M) for per-sample policies, else (M,);
        w_feat is None (= the logit weights) unless the policy has separate feature weights."""
        if self.env is None:
            raise RuntimeError(f"policy {self.algo!r} is not bound to an env; call bind(env) first")
        batch = self.env.engine.batch
        if batch is None:
            raise RuntimeError("the env has no prepared batch; call env.reset() first")
        w = self.batch_weights(batch)
        w = w if self.per_sample else w[0]
        feature = self.feature_logits(batch)
        w_feat = None if feature is None else self.feature_weights(feature, batch.y).cpu().numpy()
        return w.cpu().numpy(), w_feat


@register_policy("aver")
class Aver(FormulaPolicy):
    weight_fn = staticmethod(W.aver)


@register_policy("no-kd")
class NoKD(FormulaPolicy):
    weight_fn = staticmethod(W.no_kd)

    @property
    def env_overrides(self) -> Dict[str, Any]:
        # Zero coefficients make the loss CE alone for any action, so `predict` stays meaningful.
        return {"kd_alpha": 0.0, "feat_beta": 0.0}


@register_policy("best")
class Best(FormulaPolicy):
    weight_fn = staticmethod(W.best)

    def function_kwargs(self) -> Dict[str, Any]:
        return {"val_acc": self.env.teacher_val_acc}


@register_policy("drop-worst")
class DropWorst(FormulaPolicy):
    weight_fn = staticmethod(W.drop_worst)

    def function_kwargs(self) -> Dict[str, Any]:
        return {"val_acc": self.env.teacher_val_acc}


@register_policy("random")
class Random(FormulaPolicy):
    weight_fn = staticmethod(W.random)
    options_allowed = ("concentration",)

    def reset(self, seed: int) -> None:
        super().reset(seed)
        # A stream of its own (not the env's), so the draws do not depend on env internals.
        self.rng = np.random.default_rng([int(seed), 0x5EED])

    def function_kwargs(self) -> Dict[str, Any]:
        return {**self.options, "rng": self.rng}


@register_policy("ebkd")
class EBKD(FormulaPolicy):
    weight_fn = staticmethod(W.ebkd)
    per_sample = True
    options_allowed = ("normalization",)

    def image_weights(self, batch) -> torch.Tensor:
        # The per-image entropy of each teacher (mean over pixels / locations), from the task.
        return W.ebkd_from_entropy(batch.teacher_entropy, **self.options)


@register_policy("ca-mkd")
class CAMKD(FormulaPolicy):
    """Logit weights from the teachers' CE (`W.ca_mkd`); feature weights from the CE of each
    teacher's classifier head on the projected student map (`W.ca_mkd_feature`). Without feature
    KD (no projectors) the feature weights are the logit weights."""

    weight_fn = staticmethod(W.ca_mkd)
    per_sample = True
    options_allowed = ("normalization",)

    @property
    def env_overrides(self) -> Dict[str, Any]:
        return {"granularity": "sample", "keep_feature_maps": True}

    def image_weights(self, batch) -> torch.Tensor:
        # The per-image CE of each teacher against the ground truth, from the task.
        return W.ca_mkd_from_ce(batch.teacher_ce, **self.options)

    @torch.no_grad()
    def feature_logits(self, batch) -> Optional[torch.Tensor]:
        if batch.y.dim() != 1:  # dense tasks: the teachers have no image classifier head; feature = logit weights
            return None
        if batch.projected is None:
            if self.env.config.feature_kd and not self.env.config.keep_feature_maps:
                raise RuntimeError("ca-mkd: the batch has no projected student maps; build the env with "
                                   "keep_feature_maps=True (policy.env_overrides)")
            return None
        outs = []
        for teacher, projected in zip(self.env.engine.teachers, batch.projected):
            dtype = next(teacher.model.parameters()).dtype  # autocast may have given bfloat16 maps
            outs.append(models.classifier_head(teacher.model)(projected.to(dtype)).float())
        return torch.stack(outs)   # (M, b, C)

    def feature_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return W.ca_mkd_feature(logits, targets, **self.options)


@register_policy("aekd")
class AEKD(FormulaPolicy):
    weight_fn = staticmethod(W.aekd)
    options_allowed = ("cap", "normalize_gradients")

    def function_kwargs(self) -> Dict[str, Any]:
        return {"temperature": self.env.config.kd_temperature, **self.options}

    def image_weights(self, batch) -> torch.Tensor:
        raise ConfigError(f"policy 'aekd': its closed-form gradients are those of classification logits; the "
                          f"{self.env.config.task} task has no AE-KD form here (use aver, ebkd, ca-mkd, ...)")


def choice_weights(choice: Dict[str, Any], env) -> np.ndarray:
    """The weights (M,) or (B, M) of an oracle candidate `choice` for `env`'s prepared batch.

    Kinds: {"kind": "constant", "w": (M,)}; {"kind": "route", "teacher_groups": (M,)}: per sample,
    weight 1 on the teachers of the sample's class group; {"kind": "switch", "a": (M,), "b": (M,),
    "at": f}: `a` before episode progress f, `b` after; {"kind": "ramp", "a", "b"}: (1 - p) a + p b
    at progress p; {"kind": "instance", "by_instance": {"test:i": (M,)}}: the constant weights of
    the env's current instance.
    """
    kind = choice["kind"]
    if kind == "constant":
        return np.asarray(choice["w"], dtype=np.float32)
    if kind == "route":
        engine = env.engine
        if not engine.class_groups:
            raise ValueError("oracle: routing needs a dataset with class groups (glyphs)")
        group_of = np.empty(engine.num_classes, dtype=np.int64)
        for g, classes in enumerate(engine.class_groups):
            group_of[classes] = g
        y = engine.batch.y.cpu().numpy()
        return (group_of[y][:, None] == np.asarray(choice["teacher_groups"])[None, :]).astype(np.float32)
    if kind in ("switch", "ramp"):
        progress = env.engine.iteration / env.engine.total_iterations
        a, b = np.asarray(choice["a"], dtype=np.float32), np.asarray(choice["b"], dtype=np.float32)
        if kind == "switch":
            return a if progress < choice["at"] else b
        return ((1 - progress) * a + progress * b).astype(np.float32)
    if kind == "instance":
        key = f"{env.config.instance_set}:{env.instance}"
        if key not in choice["by_instance"]:
            raise ValueError(f"oracle: no weights for instance {key!r}; the oracle covers "
                             f"{sorted(choice['by_instance'])}")
        return np.asarray(choice["by_instance"][key], dtype=np.float32)
    raise ValueError(f"oracle: unknown choice kind {kind!r}; expected constant, route, switch, ramp or instance")


@register_policy("oracle")
class Oracle(FormulaPolicy):
    """A scenario's known answer (`baselines.oracle`), or any candidate of its search, as a policy:
    `choice` (see `choice_weights`) fixes the weights. `baselines.compare` fills `choice` from the
    scenario's cached oracle."""

    options_allowed = ("choice",)

    def __init__(self, env=None, *, seed: int = 0, **options: Any) -> None:
        if "choice" not in options:
            raise ConfigError("policy 'oracle': needs its choice (run it through baselines.compare with a scenario, "
                              "or pass choice=... from baselines.oracle)")
        super().__init__(env, seed=seed, **options)

    @property
    def env_overrides(self) -> Dict[str, Any]:
        return {"granularity": "sample"} if self.options["choice"]["kind"] == "route" else {}

    def act(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if self.env is None:
            raise RuntimeError("policy 'oracle' is not bound to an env; call bind(env) first")
        return choice_weights(self.options["choice"], self.env), None

    def weights(self, env) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return self.act()


@register_policy("best-constant")
class BestConstant(Oracle):
    """The best constant weighting of a scenario's oracle search (on validation): what no reading of
    the batch, the sample or the time can improve on among constant actions; `baselines.compare`
    fills `choice`. Where the oracle is per sample or time-varying, oracle minus best-constant is
    the part of the answer that needs a policy."""
