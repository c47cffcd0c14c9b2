"""`EnvConfig`: every setting of `MultiTeacherKDEnv`, declared once as a documented (pydantic) dataclass.

Each field's type, bounds (`Field(ge=...)`), choices (`Literal`), default and docstring are the one
declaration; pydantic checks them (`mtkd_env.runtime.options.settings`) and gives the JSON schema
(`EnvConfig.json_schema()`); `__post_init__` holds only the checks across fields. Configs load from
dicts, JSON or YAML files; unknown keys and wrong types or values raise `ConfigError` with a
one-line message naming the field and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Literal, Mapping, Optional, Union

from pydantic import Field, model_validator
from pydantic_core import ArgsKwargs

from .mdp.actions import ACTION_TRANSFORMS
from .runtime.errors import ConfigError, did_you_mean, short_repr
from .runtime.mappings import check_size, parse_pairs, safe_yaml
from .runtime.options import Cli, DeviceName, settings

__all__ = ["EnvConfig", "ConfigError", "load_config_file", "parse_overrides", "default_cache_dir", "add_env_flags",
           "env_config_data", "env_config_from"]


def default_cache_dir() -> str:
    """`$MTKD_CACHE_DIR`, else `$XDG_CACHE_HOME/mtkd_env`, else `~/.cache/mtkd_env`."""
    if os.environ.get("MTKD_CACHE_DIR"):
        return os.environ["MTKD_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mtkd_env")


@settings(unknown="EnvConfig field(s)")
class EnvConfig:
    """Configuration of one multi-teacher distillation environment.

    Defaults give the embedded benchmark: scikit-learn's handwritten digits, three heterogeneous
    teachers (one trained on systematically corrupted labels) and a small CNN student. Loss
    coefficients, temperature and optimiser follow the MTKD-RL code (T=4, alpha=1, beta=5, SGD with
    Nesterov momentum, multistep LR at 150/180/210 of 240 epochs, expressed as fractions).
    """

    # --- scenario ---------------------------------------------------------------------------
    scenario: Optional[str] = None
    """Start from a scenario of the suite (`mtkd_env.scenarios.SCENARIOS`: "unreliable",
    "specialists", "redundant", "schedule", "pools"): its dataset, teachers, student and episode;
    fields given explicitly beside it win. None: the fields' own defaults."""

    # --- data -------------------------------------------------------------------------------
    task: str = "classification"
    """The task (`mtkd_env.tasks.TASKS`): "classification" (one label per image), "segmentation"
    (masks; pixel-wise KD, mIoU) or "detection" (boxes; dense-output KD, COCO mAP). It fixes the
    step's KD terms, the per-image statistics of the observation and the evaluation metric; the
    dataset must have targets of this task."""
    dataset: str = "digits"
    """Dataset name from `mtkd_env.data.DATASETS`: "digits" (embedded), "synthetic" (generated),
    "cifar100" (torchvision layout under `data_dir`), "imagefolder" (train/val class folders)."""
    data_dir: Optional[str] = None
    """Root folder of on-disk datasets; unused by the embedded ones."""
    dataset_kwargs: Dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments passed to the dataset builder (e.g. synthetic shape/classes)."""
    augment: bool = False
    """Apply the dataset's standard training augmentation (on the device)."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Training batch size B. The last partial batch of an epoch is dropped so shapes stay fixed."""
    data_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the train/val/test split (fixed across episodes so that val and test never move)."""

    # --- models ----------------------------------------------------------------------------
    teachers: Annotated[List[str], Field(min_length=1), Cli(item="teacher spec")] = field(
        default_factory=lambda: ["cnn", "tiny_resnet", "mlp=noisy"])
    """Teacher pool, one spec per teacher: "arch" (cache; trained on first use for embedded
    data), "arch=noisy" (embedded data: trained on corrupted labels, an unreliable teacher),
    "arch=random" (untrained weights), or "arch=/path/to/checkpoint.pt"."""
    student: str = "tiny_cnn"
    """Student architecture name from `mtkd_env.models`."""
    teacher_cache_dir: Optional[str] = None
    """Where trained teachers are cached; default `default_cache_dir()/teachers`."""
    teacher_seed: Annotated[int, Field(ge=0)] = 0
    """Seed of teacher training (part of the cache key)."""
    teacher_epochs: Annotated[int, Field(ge=1)] = 30
    """Epochs of on-first-use teacher training for embedded datasets (part of the cache key)."""
    noisy_label_fraction: Annotated[float, Field(ge=0, le=1)] = 0.7
    """Fraction of training labels that an "=noisy" teacher sees shifted to a wrong class."""
    pool_size: Optional[Annotated[int, Field(ge=1)]] = None
    """Instance sets: `teachers` is a bank, and every episode draws an ordered pool of this many
    of them (an instance; `mtkd_env.scenarios.instance_sets`). None: every episode uses all
    `teachers` in order."""
    instance_set: Literal["train", "test"] = "train"
    """With `pool_size`: the instance set episodes draw from ("train" for training, "test" for
    evaluation; the two never share a combination of teachers)."""
    instance: Optional[Annotated[int, Field(ge=0)]] = None
    """With `pool_size`: every episode uses this instance of `instance_set` (an index into it);
    None: each episode draws one with the env's seeded RNG."""
    instance_seed: Annotated[int, Field(ge=0)] = 0
    """With `pool_size`: the seed of the split of the bank's combinations into the two instance
    sets and of each instance's order (fixed across episodes, like `data_seed`)."""

    # --- episode ---------------------------------------------------------------------------
    epochs: Annotated[float, Field(gt=0)] = 10.0
    """Episode length in passes over the training split."""
    max_steps: Optional[Annotated[int, Field(ge=1)]] = None
    """Episode length in env steps; overrides `epochs` when set."""
    steps_per_action: Annotated[int, Field(ge=1)] = 1
    """Distillation iterations per env step (teacher granularity only; sample needs 1)."""

    # --- loss ------------------------------------------------------------------------------
    kd_temperature: Annotated[float, Field(gt=0)] = 4.0
    """Temperature T of the logit KD term (scaled by T^2)."""
    kd_alpha: Annotated[float, Field(ge=0)] = 1.0
    """Coefficient of the weighted logit KD term."""
    feature_kd: bool = True
    """Add the weighted feature-KD term through per-teacher projectors (as the paper)."""
    feat_beta: Annotated[float, Field(ge=0)] = 5.0
    """Coefficient of the weighted feature MSE term."""

    # --- optimiser -------------------------------------------------------------------------
    lr: Annotated[float, Field(ge=0)] = 0.05
    """Initial student learning rate (SGD, momentum 0.9, Nesterov)."""
    momentum: Annotated[float, Field(ge=0)] = 0.9
    """SGD momentum."""
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    """SGD weight decay (the MTKD-RL student value)."""
    lr_schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    """"multistep", "cosine" or "constant"."""
    lr_milestones: List[Annotated[float, Field(gt=0, lt=1)]] = field(default_factory=lambda: [0.625, 0.75, 0.875])
    """Multistep milestones as fractions of the episode (150/180/210 of 240 epochs)."""
    lr_gamma: Annotated[float, Field(ge=0)] = 0.1
    """Multistep decay factor."""

    # --- RL interface ----------------------------------------------------------------------
    granularity: Literal["teacher", "sample"] = "teacher"
    """"teacher": flat Box of batch statistics, action (M,) or (2M,); "sample": the paper's
    per-sample state (B, F), action (B, M) or (B, 2M)."""
    separate_feature_weights: bool = False
    """Separate logit and feature weights: action width 2M instead of M."""
    action_transform: Literal[tuple(ACTION_TRANSFORMS)] = "softmax"
    """How actions in [-1, 1] become simplex weights: "softmax" = softmax(a / action_temperature),
    "linear" = (a + 1) / sum(a + 1) (exactly invertible; uniform if all are -1), "select" = teacher
    m is selected iff a_m > 0 and the selected teachers share the weight equally (1 / #selected);
    none selected gives all-zero weights, i.e. CE only (Reinforced Multi-Teacher Selection)."""
    action_temperature: Annotated[float, Field(gt=0)] = 0.5
    """Softmax temperature of the action transform."""
    obs_features: Optional[Annotated[List[str], Field(min_length=1)]] = None
    """Teacher granularity: the statistics in the observation, in this order, from
    `mtkd_env.mdp.OBS_FEATURES` — per teacher "ce", "acc", "kl", "cos", "entropy" (M
    columns each), then "student_ce", "student_acc", "progress", "lr"; null = all (5M + 4). The
    teachers' own statistics ("ce", "acc", "entropy") do not depend on the student, so a value
    function cannot read the effect of the agent's earlier actions from them."""
    sample_obs_embeddings: bool = True
    """Sample granularity: include each teacher's pooled embedding in the state."""
    sample_obs_logits: bool = True
    """Sample granularity: include each teacher's logits in the state."""
    sample_obs_student: bool = False
    """Sample granularity: append the student's pooled embedding (D_s) to every state row, after
    the teacher blocks (the student representation of Reinforced Multi-Teacher Selection)."""
    reward: Union[str, Callable, None] = None
    """Reward name from `mtkd_env.mdp.REWARDS`, or a callable `f(StepResult) -> float`.
    None = "probe_loss_drop" for teacher granularity, "paper" for sample granularity."""
    reward_interval: Annotated[int, Field(ge=1)] = 10
    """Steps between validation evaluations of the rewards that use them ("val_acc_delta",
    "twin_val_acc", "twin_val_loss"); they are also evaluated at the episode's end."""
    log_rewards: List[str] = field(default_factory=list)
    """Further reward names computed every step next to `reward` and reported in
    `info["rewards"]` (for logging and `baselines.diagnose`; they do not drive the agent). A
    "twin_*" name here also creates the twin student."""
    probe_size: Annotated[int, Field(ge=1)] = 256
    """Samples in the fixed held-out probe batch (taken from the validation split)."""
    divergence_penalty: float = -1.0
    """Reward of the step on which the loss becomes non-finite (the episode then ends)."""
    eval_batch_size: Annotated[int, Field(ge=1)] = 512
    """Batch size of validation/test evaluation."""

    # --- runtime ---------------------------------------------------------------------------
    device: DeviceName = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    show_progress: bool = True
    """Show a progress bar while teachers are trained on first use."""
    amp: Literal["none", "bf16"] = "none"
    """Mixed precision of the forward passes on CUDA: "none" or "bf16" (autocast; ignored on CPU)."""
    channels_last: bool = False
    """Run teachers, student and inputs in channels_last memory format (faster convs on GPUs)."""
    compile: bool = False
    """`torch.compile` the student and the teachers (first steps are slow while it compiles)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """`torch.compile` mode with `compile`: "default", "reduce-overhead" (CUDA graphs over the
    fixed-shape forward and backward: fewer kernel launches for small models) or "max-autotune"."""
    cudnn_benchmark: bool = False
    """On CUDA, let cuDNN time its convolution algorithms for the step's fixed shapes
    (`torch.backends.cudnn.benchmark`, process-wide); faster, but not bit-reproducible."""
    keep_feature_maps: bool = False
    """Keep the student's and teachers' feature maps and the projected student maps (detached) in
    `engine.batch` for policies that read them (CA-MKD's feature weights, MMKD's Gram rows); they
    then stay in memory until the next batch. Does not change training."""
    cache_teacher_outputs: Optional[bool] = None
    """Run the frozen teachers once over the training split and reuse their outputs (logits,
    embeddings, feature maps) and statistics every epoch instead of M teacher forwards per batch.
    Exact: the same training as without it, up to float rounding (the teachers are frozen, in eval
    mode, and without augmentation see the same images). null (default) = where it is exact and
    fits: without augmentation, on an in-memory dataset, when the cache (N x the teachers' output
    sizes, float32) is at most 1 GiB of device memory (the embedded digits: 25 MB); true = always
    (an error with augmentation, unless `teacher_views` fixes the views, or with a dataset streamed
    from disk); false = never."""
    teacher_views: Annotated[int, Field(ge=0)] = 0
    """CHANGES THE DATA DISTRIBUTION (off by default, 0). With `augment` and V >= 1: every training
    image gets V augmented views, drawn once from `data_seed` (the same in every episode), the
    teachers' outputs on all N*V views are cached (as `cache_teacher_outputs`, whatever their size),
    and each batch gives each sample one of its V views, chosen with the loader's augmentation
    generator (a pure function of the episode seed). The student then trains on these N*V fixed
    images instead of a fresh augmentation per batch: cheaper (no teacher forwards) but less
    augmentation, so results are not comparable with `teacher_views=0`. Needs `augment=true`, an
    in-memory dataset, and `cache_teacher_outputs` null or true."""

    # ---------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _scenario_first(cls, data: Any) -> Any:
        """With `scenario`, its values under the explicitly given ones (the keys of the call)."""
        kwargs = data.kwargs if isinstance(data, ArgsKwargs) else data
        if isinstance(kwargs, dict) and isinstance(kwargs.get("scenario"), str):
            from .scenarios import SCENARIOS, scenario_settings

            if kwargs["scenario"] not in SCENARIOS:  # the field's own check: one line naming the field
                raise ConfigError(f"scenario: unknown scenario {kwargs['scenario']!r}"
                                  f"{did_you_mean([kwargs['scenario']], SCENARIOS)}; known: {sorted(SCENARIOS)}")
            kwargs = {**scenario_settings(kwargs["scenario"]), **kwargs}
            return ArgsKwargs(data.args, kwargs) if isinstance(data, ArgsKwargs) else kwargs
        return data

    def __post_init__(self) -> None:
        """The checks that span fields or need the domain (types, bounds and choices are declared)."""
        check_size(self.dataset_kwargs, "dataset_kwargs")  # free-form: a shared-list bomb would hang asdict
        for spec in self.teachers:
            if not spec.split("=", 1)[0]:
                raise ConfigError(f"teachers: each entry must be 'arch' or 'arch=source', got {short_repr(spec)}")
        if self.teacher_views and not self.augment:
            raise ConfigError(f"teacher_views: fixes augmented views, so it needs augment=true; got "
                              f"teacher_views={self.teacher_views} with augment=false (set teacher_views=0)")
        if self.teacher_views and self.cache_teacher_outputs is False:
            raise ConfigError("teacher_views: caches the teachers' outputs on the views, but cache_teacher_outputs "
                              "is false; set cache_teacher_outputs to null or true, or teacher_views=0")
        if self.cache_teacher_outputs and self.augment and not self.teacher_views:
            raise ConfigError("cache_teacher_outputs: teacher outputs can only be cached without augmentation "
                              "(or with fixed views, teacher_views >= 1); set augment=false or "
                              "cache_teacher_outputs=false")
        if self.obs_features is not None:
            from .mdp.observations import OBS_FEATURES

            if any(f not in OBS_FEATURES for f in self.obs_features) or len(set(self.obs_features)) != len(self.obs_features):
                raise ConfigError(f"obs_features: expected a non-empty list of distinct names from {list(OBS_FEATURES)}, "
                                  f"got {short_repr(self.obs_features)}")
            if self.granularity != "teacher":
                raise ConfigError("obs_features: selects teacher-granularity statistics; the sample granularity uses "
                                  "sample_obs_embeddings / sample_obs_logits / sample_obs_student")
        if self.pool_size is not None:
            from .scenarios import instance_sets

            try:
                sets = instance_sets(len(self.teachers), self.pool_size, self.instance_seed)
            except ValueError as exc:
                raise ConfigError(f"pool_size: {exc}") from None
            n = len(sets[self.instance_set == "test"])
            if self.instance is not None and self.instance >= n:
                raise ConfigError(f"instance: the {self.instance_set} instance set has {n} instances (0..{n - 1}), "
                                  f"got {self.instance}")
        elif self.instance is not None:
            raise ConfigError("instance: selects one instance of an instance set, which needs pool_size")
        if self.granularity == "sample" and self.steps_per_action != 1:
            raise ConfigError("steps_per_action: sample granularity weights one batch per action, "
                              f"so it must be 1, got {self.steps_per_action}")

    def validate(self) -> None:
        """Check the current field values again (after in-place edits); raise `ConfigError`."""
        dataclasses.replace(self)

    # --- (de)serialisation -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "EnvConfig":
        """Build from a plain dict; unknown keys raise `ConfigError` listing the known ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"env config: expected a mapping of field names to values, got "
                              f"{type(data).__name__}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "EnvConfig":
        """Load from a .json, .yaml or .yml file."""
        return cls.from_dict(load_config_file(path))

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (a callable reward is written as its qualified name)."""
        out = dataclasses.asdict(self)
        if callable(self.reward):
            out["reward"] = getattr(self.reward, "__qualname__", repr(self.reward))
        return out

    def replace(self, **overrides: Any) -> "EnvConfig":
        """A copy with `overrides` applied (validated like `from_dict`). A new `scenario` replaces
        the old one's values; the fields that differ from the old scenario's (the user's own
        choices) are kept."""
        if "scenario" in overrides and overrides["scenario"] != self.scenario:
            old = self.baseline(self.scenario)
            own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "scenario" and getattr(self, f.name) != old[f.name]}
            return type(self)(**{**own, **overrides})
        return dataclasses.replace(self, **overrides)

    @classmethod
    def baseline(cls, scenario: Optional[str]) -> Dict[str, Any]:
        """Every field's value when only `scenario` is given."""
        base = cls(scenario=scenario)
        return {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}

    @classmethod
    def field_docs(cls) -> dict:
        """Field name -> its documentation string."""
        return {name: " ".join((f.description or "").split()) for name, f in cls.__pydantic_fields__.items()}

    @classmethod
    def json_schema(cls) -> dict:
        """The JSON schema of a config file (types, bounds, choices, defaults and docs)."""
        from pydantic import TypeAdapter

        return TypeAdapter(cls).json_schema()


def load_config_file(path: Union[str, Path]) -> dict:
    """Read a JSON or YAML mapping from `path`; a clear `ConfigError` if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a .json, .yaml or .yml file)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = safe_yaml(text)
        else:
            raise ConfigError(f"config file {str(path)!r}: expected a .json, .yaml or .yml extension")
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {str(path)!r} is not valid: {exc}".splitlines()[0]) from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {str(path)!r} is not valid: {exc}".splitlines()[0]) from None
    if data is None:
        data = {}
    check_size(data, f"config file {str(path)!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at top level, got "
                          f"{type(data).__name__}")
    return data


def parse_overrides(pairs: list, flag: str = "override") -> dict:
    """Parse CLI `KEY=VALUE` strings; values are read as YAML scalars/lists (`epochs=2`,
    `teachers=[cnn,mlp]`, `device=cpu`). A key given twice with different values is refused."""
    return parse_pairs(pairs, flag)


# --- the env-config flags every CLI shares ----------------------------------------------------
def add_env_flags(parser: argparse.ArgumentParser) -> None:
    """`--env-config FILE` and `--env KEY=VALUE ...` (repeatable: every --env adds to the overrides)."""
    parser.add_argument("--env-config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML/JSON file of EnvConfig fields")
    parser.add_argument("--env", nargs="+", action="extend", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                        help="EnvConfig overrides, e.g. --env epochs=5 device=cpu; repeated --env flags add up "
                             "(a key given twice with different values is refused)")


def env_config_data(args: Mapping[str, Any], base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The EnvConfig fields the command line sets: `--env-config` (else `base`) with the `--env`
    overrides, as a dict (its keys are the fields the user chose)."""
    data = load_config_file(args["env_config"]) if "env_config" in args else dict(base or {})
    data.update(parse_overrides(args.get("env", []), "--env"))
    return data


def env_config_from(args: Mapping[str, Any], base: Optional[Dict[str, Any]] = None) -> EnvConfig:
    """The `EnvConfig` of `--env-config` (else `base`, else the defaults) with the `--env` overrides."""
    return EnvConfig.from_dict(env_config_data(args, base))
