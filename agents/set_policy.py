"""`TeacherSetPolicy`: one network applied to each teacher's features, for stock SB3 on-policy algorithms.

The MLP policy reads the observation as one vector: it is tied to the teachers' order and to the pool
size, and it cannot act per sample. This policy reads the observation as a set of *tokens*, one per
teacher (teacher granularity) or per (sample, teacher) pair (sample granularity), and applies the same
weights to every token:

- token m of row r: its own features x_rm (the teacher's statistics, or the sample's cos, KL and CE
  for that teacher, plus its logits when the env shows them) and the row's context c_r (progress and LR,
  or the student's embedding); inputs pass through sign(x)·log(1 + |x|), so CE, KL and accuracy
  reach the network on comparable scales without running statistics that would depend on the pool;
- h_rm = relu(W1 [x_rm, c_r]); z_rm = tanh(W2 [h_rm, h_rm − mean_m' h_rm']) (DeepSets with the
  teacher-mean subtracted: each teacher is judged against the others of its row);
- action a_rm = w·z_rm + b: permuting the teachers permutes the actions, and any pool size works;
  the env's softmax turns the row's actions into weights on the simplex. The output layer starts at
  gain 0.01 (SB3's init), so an untrained policy gives ≈ uniform weights;
- value: a second encoder of the same form, averaged over every token, then a linear layer.

Exploration: gSDE with one noise vector w_ε ~ N(0, σ²) of the token latent's width, shared by every
token (noise_rm = z_rm·w_ε), drawn when SB3 resamples (with `sde_sample_freq: -1`, once per rollout
= one consistent perturbation per episode, as the shipped PPO uses), or a Gaussian with one shared σ
(`use_sde: false`). At sample granularity the action has B·M dimensions; the log-probability is
summed over a row's teachers and *averaged* over the B rows (the batch as independent
sub-decisions sharing one reward), so PPO's ratio is a per-sample geometric mean, as in
sequence-level PPO variants, instead of a product of B ratios that the clip would stop at once.

Use (rl-zoo3 hyperparameter file): `policy: TeacherSetPolicy`, `policy_kwargs: {hidden: 64,
log_std_init: -2.0}` (`ppo-set.yml`, `ppo-sample.yml`). `agents.sb3_agent` adds what the env decides
(`set_policy_kwargs`: the observation layout, the logit and student-embedding widths) and saves it in
the model file's metadata, from which `load_sb3_policy` rebuilds the policy.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution, StateDependentNoiseDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch.distributions import Normal

from mtkd_env import EnvConfig
from mtkd_env.mdp.observations import OBS_FEATURES, TEACHER_STATS
from mtkd_env.runtime.errors import ConfigError, did_you_mean

__all__ = ["TeacherSetPolicy", "set_policy_kwargs", "SB3_POLICIES", "resolve_policy", "layout_for", "is_set_policy"]


def layout_for(config: EnvConfig) -> Dict[str, Any]:
    """The token layout of `config`'s observation, for `TeacherSetPolicy(layout=...)`.

    Teacher granularity: `columns` is a string with one letter per observation block in order, "T" a
    per-teacher statistic (M columns), "G" one global column. Sample granularity: `per_teacher`
    columns per teacher (cos, KL, CE, then C logits when shown) and `context` trailing columns (the
    student's embedding when shown; its width is read from the observation)."""
    if config.separate_feature_weights:
        raise ConfigError("TeacherSetPolicy: expected one weight per teacher (separate_feature_weights=false)")
    if config.granularity == "teacher":
        names = config.obs_features or OBS_FEATURES
        return {"granularity": "teacher", "columns": "".join("T" if n in TEACHER_STATS else "G" for n in names)}
    if config.sample_obs_embeddings:
        raise ConfigError("TeacherSetPolicy: the sample state's teacher embeddings differ in width between teachers; "
                          "expected sample_obs_embeddings=false")
    return {"granularity": "sample", "per_teacher": 3, "logits": bool(config.sample_obs_logits),
            "student": bool(config.sample_obs_student)}


def _squash(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class _Tokens(nn.Module):
    """Splits observations into tokens: (N, D) or (N, B, F) -> tokens (N, R, M, k) and context (N, R, g)."""

    def __init__(self, layout: Dict[str, Any], num_classes: int = 0) -> None:
        super().__init__()
        self.layout = dict(layout)
        self.num_classes = num_classes
        if layout["granularity"] == "teacher":
            cols = layout["columns"]
            self.k, self.g = cols.count("T"), cols.count("G")
        else:
            self.k = layout["per_teacher"] + (num_classes if layout["logits"] else 0)
            self.g = 0  # the student's embedding width is read from the observation

    def forward(self, obs: torch.Tensor, student_dim: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.layout["granularity"] == "teacher":
            n, d = obs.shape
            m = (d - self.g) // self.k
            parts, ctx, col = [], [], 0
            for kind in self.layout["columns"]:
                if kind == "T":
                    parts.append(obs[:, col:col + m])
                    col += m
                else:
                    ctx.append(obs[:, col:col + 1])
                    col += 1
            tokens = torch.stack(parts, dim=-1)[:, None]                            # (N, 1, M, k)
            context = torch.cat(ctx, dim=-1)[:, None] if ctx else obs.new_zeros(n, 1, 0)
            return tokens, context
        n, r, f = obs.shape
        m = (f - student_dim) // self.k
        tokens = obs[..., :m * self.k].reshape(n, r, m, self.k)                       # (N, R, M, k)
        return tokens, obs[..., m * self.k:]                                           # context (N, R, s)


class _Encoder(nn.Module):
    """Tokens (N, R, M, k) and context (N, R, g) -> latents (N, R, M, H)."""

    def __init__(self, k: int, g: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(k + g, hidden)
        self.mix = nn.Linear(2 * hidden, hidden)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ctx = context[:, :, None, :].expand(*tokens.shape[:3], context.shape[-1])
        h = torch.relu(self.inp(_squash(torch.cat([tokens, ctx], dim=-1))))
        return torch.tanh(self.mix(torch.cat([h, h - h.mean(dim=2, keepdim=True)], dim=-1)))


class TeacherSetExtractor(nn.Module):
    """SB3's `mlp_extractor` for `TeacherSetPolicy`: policy latents (N, R, M, H) per token, value
    latents (N, H) averaged over tokens."""

    def __init__(self, layout: Dict[str, Any], hidden: int, num_classes: int, student_dim: int) -> None:
        super().__init__()
        self.tokens = _Tokens(layout, num_classes)
        g = self.tokens.g + student_dim
        self.student_dim = student_dim
        self.pi = _Encoder(self.tokens.k, g, hidden)
        self.vf = _Encoder(self.tokens.k, g, hidden)
        self.latent_dim_pi = self.latent_dim_vf = hidden

    def split(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.tokens(features, self.student_dim)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.pi(*self.split(features))

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.vf(*self.split(features)).mean(dim=(1, 2))

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class TokenHead(nn.Module):
    """One linear map applied to every token latent: (N, R, M, H) -> actions (N, R·M)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent).flatten(1)


def _row_mean(values: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, R·M) per-dimension log-probabilities -> (N,): summed over a row's teachers, averaged over rows."""
    return values.reshape(values.shape[0], rows, -1).sum(-1).mean(-1)


class TokenSDE(StateDependentNoiseDistribution):
    """gSDE over tokens: one exploration vector w (H, 1) shared by all tokens, noise_t = z_t · w."""

    rows = 1

    def proba_distribution_net(self, latent_dim: int, log_std_init: float = -2.0,
                               latent_sde_dim: Optional[int] = None) -> Tuple[nn.Module, nn.Parameter]:
        self.latent_sde_dim = latent_dim
        log_std = nn.Parameter(torch.ones(latent_dim, 1) * log_std_init, requires_grad=True)
        self.sample_weights(log_std)
        return TokenHead(latent_dim), log_std

    def proba_distribution(self, mean_actions: torch.Tensor, log_std: torch.Tensor,
                           latent_sde: torch.Tensor) -> "TokenSDE":
        self._latent_sde = latent_sde if self.learn_features else latent_sde.detach()
        variance = (self._latent_sde ** 2 @ self.get_std(log_std) ** 2).flatten(1)
        self.distribution = Normal(mean_actions, torch.sqrt(variance + self.epsilon))
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return _row_mean(self.distribution.log_prob(actions), self.rows)

    def entropy(self) -> torch.Tensor:
        return _row_mean(self.distribution.entropy(), self.rows)

    def get_noise(self, latent_sde: torch.Tensor) -> torch.Tensor:
        latent_sde = latent_sde if self.learn_features else latent_sde.detach()
        if len(latent_sde) == 1 or len(latent_sde) != len(self.exploration_matrices):
            return (latent_sde @ self.exploration_mat).flatten(1)
        return torch.einsum("nrmh,nhk->nrmk", latent_sde, self.exploration_matrices).flatten(1)


class TokenGaussian(DiagGaussianDistribution):
    """A Gaussian with one σ shared by all tokens (no gSDE)."""

    rows = 1

    def proba_distribution_net(self, latent_dim: int, log_std_init: float = 0.0) -> Tuple[nn.Module, nn.Parameter]:
        return TokenHead(latent_dim), nn.Parameter(torch.tensor(float(log_std_init)), requires_grad=True)

    def proba_distribution(self, mean_actions: torch.Tensor, log_std: torch.Tensor) -> "TokenGaussian":
        self.distribution = Normal(mean_actions, torch.ones_like(mean_actions) * log_std.exp())
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return _row_mean(self.distribution.log_prob(actions), self.rows)

    def entropy(self) -> torch.Tensor:
        return _row_mean(self.distribution.entropy(), self.rows)


class KeepShape(BaseFeaturesExtractor):
    """The observation as it is ((N, D) or (N, B, F)): the extractor cuts the tokens."""

    def __init__(self, observation_space: gym.spaces.Box) -> None:
        super().__init__(observation_space, int(np.prod(observation_space.shape)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return observations


class TeacherSetPolicy(ActorCriticPolicy):
    """SB3's `ActorCriticPolicy` with the token extractor and token distributions (module docstring).

    `layout`: from `layout_for(config)`; `hidden`: the token latent width H; `num_classes`,
    `student_dim`: the sample state's logit and student-embedding widths (`set_policy_kwargs`)."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, lr_schedule: Any,
                 layout: Optional[Dict[str, Any]] = None, hidden: int = 64, num_classes: int = 0,
                 student_dim: int = 0, **kwargs: Any) -> None:
        if layout is None:
            raise ConfigError("TeacherSetPolicy: missing policy_kwargs.layout (agents.set_policy.set_policy_kwargs)")
        for key in ("net_arch", "features_extractor_class", "share_features_extractor", "squash_output"):
            if kwargs.get(key):
                raise ConfigError(f"TeacherSetPolicy: policy_kwargs.{key} does not apply to this policy; "
                                  "expected hidden, log_std_init, use_expln, ortho_init")
        self.layout, self.hidden = dict(layout), int(hidden)
        self.num_classes, self.student_dim = int(num_classes), int(student_dim)
        kwargs["features_extractor_class"] = KeepShape
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = TeacherSetExtractor(self.layout, self.hidden, self.num_classes, self.student_dim)

    def _build(self, lr_schedule: Any) -> None:
        old = self.action_dist
        if isinstance(old, StateDependentNoiseDistribution):
            self.action_dist = TokenSDE(old.action_dim, full_std=True, use_expln=old.use_expln,
                                        learn_features=old.learn_features)
        else:
            self.action_dist = TokenGaussian(old.action_dim)
        super()._build(lr_schedule)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor):
        self.action_dist.rows = latent_pi.shape[1]  # R: the log-probability averages over the rows
        return super()._get_action_dist_from_latent(latent_pi)

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(layout=self.layout, hidden=self.hidden, num_classes=self.num_classes,
                    student_dim=self.student_dim)
        data.pop("features_extractor_class", None)
        return data

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for one raw observation of any pool size or batch size, (D,) -> (M,) or
        (B, F) -> (B, M), clipped to [-1, 1] (SB3's `predict` insists on the training shape)."""
        self.set_training_mode(False)
        obs = np.asarray(obs, dtype=np.float32)
        with torch.no_grad():
            actions = self._predict(torch.as_tensor(obs, device=self.device)[None], deterministic=deterministic)
        actions = actions[0].cpu().numpy()
        actions = actions.reshape(obs.shape[0], -1) if obs.ndim == 2 else actions.reshape(-1)
        return np.clip(actions, -1.0, 1.0)


SB3_POLICIES: Tuple[str, ...] = ("MlpPolicy", "TeacherSetPolicy")
"""Policy names `policy:` accepts for the SB3 algorithms (PPO and A2C take both; SAC and TD3 MlpPolicy)."""


def is_set_policy(name: Union[str, type, None]) -> bool:
    return name == "TeacherSetPolicy"


def resolve_policy(name: str, algo: str) -> Union[str, type]:
    """The policy argument for the SB3 constructor: SB3's own name, or our class."""
    if name not in SB3_POLICIES:
        raise ConfigError(f"hyperparameter policy: unknown policy {name!r}{did_you_mean([name], SB3_POLICIES)}; "
                          f"expected one of {list(SB3_POLICIES)}")
    if is_set_policy(name):
        if algo not in ("ppo", "a2c", "ppo-set", "ppo-sample", "ppo-credit"):
            raise ConfigError(f"hyperparameter policy: TeacherSetPolicy is an actor-critic policy for ppo or a2c, "
                              f"got --algo {algo}")
        return TeacherSetPolicy
    return name


def set_policy_kwargs(config: EnvConfig, sample_layout: Optional[Sequence[tuple]] = None) -> Dict[str, Any]:
    """What `TeacherSetPolicy` needs of the env besides its spaces: the layout of `config`'s
    observation and, at sample granularity, the logit and student-embedding widths read from the
    env's `sample_layout` ((teacher, quantity, column slice) blocks)."""
    layout = layout_for(config)
    out: Dict[str, Any] = {"layout": layout}
    if layout["granularity"] == "sample":
        widths = {name: cols.stop - cols.start for m, name, cols in sample_layout or () if m in (0, -1)}
        out.update(num_classes=widths.get("logits", 0), student_dim=widths.get("student_embedding", 0))
    return out
