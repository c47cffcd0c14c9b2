"""Scenarios: named teacher-pool recipes whose right weighting is known, and instance sets.

A scenario is a set of `EnvConfig` values (dataset, teacher pool and how each teacher is made,
student, episode) chosen so that one weighting of the teachers is known to be right, and by a
margin the suite's test split can measure. `EnvConfig(scenario=NAME)` (so `--env scenario=NAME` on
every CLI and `gym.make("MultiTeacherKD-v0", scenario=NAME)`) starts from the scenario's values;
fields given explicitly next to it win. One config field rather than one gym id per scenario: a
scenario is a starting point that users vary (`epochs`, `reward`, `granularity`, ...), like any
other field, and every CLI already takes `--env KEY=VALUE`.

The oracle of each scenario (the best weighting found on validation, never on test) is searched
by `python -m baselines.oracle`; the docs' scenario table holds the measured numbers.

Instance sets (the `pools` scenario, DACBench's design): with `pool_size` set, `teachers` is a
bank and every episode trains against an *instance*, an ordered tuple of `pool_size` distinct bank
teachers. `instance_sets` lists the train and the test instances: every combination of bank
teachers belongs to exactly one of the two sets (so no test pool was seen in training, in any
order), and each instance's order is fixed; both lists are a pure function of
(bank size, pool size, seed, test fraction). `MultiTeacherKDEnv.reset` draws an instance of the
configured set with its own seeded `np_random` (or takes `options={"instance": i}`) and reports its
id in `info["instance"]`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from .runtime.errors import unknown_name

__all__ = ["Scenario", "SCENARIOS", "register_scenario", "get_scenario", "scenario_settings", "instance_sets", "suite",
           "DEFAULT_SCENARIO"]


@dataclass(frozen=True)
class Scenario:
    """One recipe of the suite. `settings` are `EnvConfig` field values; the rest is documentation
    (rendered in the docs' scenario table) and what `baselines.oracle` searches."""

    name: str
    summary: str
    """One line: what the pool is."""
    settings: Mapping[str, Any]
    """`EnvConfig` values of the scenario (explicit fields given beside `scenario` win)."""
    right_weighting: str
    """The weighting that is right, and why."""
    predictions: str
    """Which formula baselines should win or lose, and why."""
    oracle: str
    """How `baselines.oracle` finds the known answer: "constant" (the best of a grid of constant
    weightings on validation), "route" (each sample to its group's expert), "schedule" (the best of
    a family of time-varying weightings) or "instance" (per test instance, the best of a small grid)."""
    teacher_groups: Tuple[int, ...] = field(default=())
    """For "route": the class group each teacher is the expert of, in pool order."""


SCENARIOS: Dict[str, Scenario] = {}
"""Scenario name -> `Scenario`."""


def register_scenario(scenario: Scenario) -> Scenario:
    if scenario.name in SCENARIOS:
        raise ValueError(f"scenario {scenario.name!r} is registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario


def get_scenario(name: str) -> Scenario:
    """The scenario `name`; a `ConfigError` with "did you mean" for an unknown one."""
    if name not in SCENARIOS:
        raise unknown_name("scenario", name, SCENARIOS)
    return SCENARIOS[name]


def suite(task: str = "classification") -> List[str]:
    """The scenarios of one task, in registration order: what "all" means on the command lines
    (the classification suite; the dense tasks' scenarios are named explicitly, since several
    policies of the default leaderboard exist for classification only)."""
    return [n for n, sc in SCENARIOS.items() if sc.settings.get("task", "classification") == task]


def scenario_settings(name: str) -> Dict[str, Any]:
    """A copy of the `EnvConfig` values of scenario `name`."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in get_scenario(name).settings.items()}


def instance_sets(bank_size: int, pool_size: int, seed: int = 0,
                  test_fraction: float = 0.3) -> Tuple[List[Tuple[int, ...]], List[Tuple[int, ...]]]:
    """(train instances, test instances): ordered tuples of `pool_size` distinct bank indices.

    Every `pool_size`-combination of the bank is in exactly one set (round(test_fraction * n)
    combinations, at least one, in the test set; the rest, at least one, in the train set); each
    combination appears in one order, drawn with `seed`. Needs `bank_size > pool_size >= 1`.
    """
    if not 1 <= pool_size < bank_size:
        raise ValueError(f"instance sets need 1 <= pool_size < the number of teachers, got pool_size {pool_size} "
                         f"with {bank_size} teachers")
    rng = np.random.default_rng([seed, bank_size, pool_size])
    combos = list(itertools.combinations(range(bank_size), pool_size))
    order = rng.permutation(len(combos))
    ordered = [tuple(int(i) for i in rng.permutation(combos[j])) for j in order]
    n_test = min(len(ordered) - 1, max(1, round(test_fraction * len(ordered))))
    return ordered[n_test:], ordered[:n_test]


DEFAULT_SCENARIO = "unreliable"
"""The scenario of the headline numbers (the noise floor of `benchmarks.suite_targets`)."""

_GLYPHS = {"dataset": "glyphs", "student": "small_cnn", "teacher_epochs": 30, "epochs": 10.0}
"""What every suite scenario shares: the generated glyphs (2,000 train / 2,000 val / 10,000 test
images, 20 classes in 4 groups), the small_cnn student, 10-epoch episodes (310 steps of batch 64)
and 30-epoch teachers."""

register_scenario(Scenario(
    name="unreliable",
    summary="two good teachers (pool_cnn, tiny_resnet) and a confidently, consistently wrong one "
            "(pool_cnn trained on labels 70 % shifted to the next class)",
    settings={**_GLYPHS, "teachers": ["pool_cnn", "tiny_resnet", "pool_cnn=noisy"]},
    right_weighting="drop the noisy teacher: it predicts class k+1 for most images of class k, so every unit "
                    "of weight on it pulls the student towards a wrong answer",
    predictions="CA-MKD (label-aware, can zero a teacher) and best-teacher should win; EBKD uses no labels and "
                "rewards the noisy teacher's confident (low-entropy) outputs, so it should lose to AVER",
    oracle="constant"))

register_scenario(Scenario(
    name="specialists",
    summary="four specialists (pool_cnn each trained on one class group only): expert on its group, "
            "confidently wrong elsewhere",
    settings={**_GLYPHS, "teachers": [f"pool_cnn=group:{g}" for g in range(4)]},
    right_weighting="per sample, all weight on the expert of the sample's group: every constant weighting puts "
                    "at least 3/4 of the weight of most samples on teachers that have never seen their class",
    predictions="per-sample label-aware formulas (CA-MKD) should come closest; batch-level weightings "
                "(AVER, best-teacher, any constant) cannot route; EBKD prefers whichever teacher is most "
                "confident, which out of its group is a wrong one",
    oracle="route", teacher_groups=(0, 1, 2, 3)))

register_scenario(Scenario(
    name="redundant",
    summary="three near-copies of one weak teacher (mlp, seeds 0/1/2) and one distinct strong teacher (pool_cnn)",
    settings={**_GLYPHS, "teachers": ["mlp", "mlp=seed:1", "mlp=seed:2", "pool_cnn"]},
    right_weighting="count the copies as one vote (or drop them): equal weights give 3/4 of the KD weight to "
                    "one view of the data",
    predictions="best-teacher and CA-MKD (label-aware) should win; AVER over-counts the copies; EBKD's "
                "entropy weights do not see that three teachers agree because they are the same model",
    oracle="constant"))

register_scenario(Scenario(
    name="schedule",
    summary="a teacher close to the student's capacity (small_cnn, 30 epochs) next to a far stronger one "
            "(pool_cnn): the capacity gap of TAKD / ESKD",
    settings={**_GLYPHS, "teachers": ["small_cnn", "pool_cnn"]},
    right_weighting="a schedule: the closer teacher while the student is weak, the stronger one at the end; "
                    "the reverse order is measurably worse, so the right weighting changes during the episode",
    predictions="no formula baseline is time-aware by design; label-aware ones (CA-MKD) follow whichever "
                "teacher has the lower CE on the batch, which is the strong one throughout",
    oracle="schedule"))

register_scenario(Scenario(
    name="pools",
    summary="every episode draws 3 of 7 teachers (good, weak, noisy, a specialist) in some order: a train "
            "set and a disjoint test set of instances",
    settings={**_GLYPHS, "teachers": ["pool_cnn", "tiny_resnet", "small_cnn", "mlp", "pool_cnn=noisy",
                                      "tiny_resnet=noisy", "pool_cnn=group:0"],
              "pool_size": 3, "sample_obs_embeddings": False},
    right_weighting="depends on the instance: weight the reliable teachers of the drawn pool; no constant "
                    "action is right for every instance, so a policy must read the observation",
    predictions="label-aware formulas adapt per instance (CA-MKD); constant weightings and AVER cannot",
    oracle="instance"))

register_scenario(Scenario(
    name="seg_unreliable",
    summary="segmentation of generated scenes: one good teacher (seg_resnet) and two confidently, consistently "
            "wrong ones (seg_cnn and seg_resnet trained on masks whose classes are 70 % shifted to the next)",
    settings={"task": "segmentation", "dataset": "scenes", "student": "seg_tiny", "teacher_epochs": 30,
              "epochs": 10.0, "batch_size": 32, "kd_temperature": 1.0,
              "teachers": ["seg_resnet", "seg_cnn=noisy", "seg_resnet=noisy"]},
    right_weighting="the good teacher alone: on most images the noisy ones label every pixel of kind k as kind k+1 "
                    "(and the background as a shape), and at T = 1 their pixel-wise KD pulls the student towards "
                    "that wrong mask; equal weights give them 2/3 of it",
    predictions="best-teacher and CA-MKD (per-image teacher CE vs the mask) should beat AVER; drop-worst keeps one "
                "noisy teacher; EBKD uses no labels and the noisy teachers are confident",
    oracle="constant"))

register_scenario(Scenario(
    name="det_unreliable",
    summary="detection in generated scenes: one good dense detector (det_resnet) and two confidently, consistently "
            "wrong ones (det_cnn and det_resnet trained on boxes whose labels are 70 % shifted to the next class)",
    settings={"task": "detection", "dataset": "scene_boxes", "student": "det_tiny", "teacher_epochs": 30,
              "epochs": 10.0, "batch_size": 32, "kd_temperature": 1.0,
              "teachers": ["det_resnet", "det_cnn=noisy", "det_resnet=noisy"]},
    right_weighting="the good teacher alone: the noisy ones' location class distributions name the wrong kind for "
                    "most objects, so their dense-output KD pulls the student's classifications towards wrong labels",
    predictions="best-teacher and CA-MKD (per-image detection loss vs the boxes) should beat AVER",
    oracle="constant"))
