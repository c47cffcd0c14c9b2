"""Both dense tasks through the same command lines as classification: `baselines.compare` (formula
baselines on per-image statistics) and `agents.train` (PPO), on tiny generated scenes."""

from __future__ import annotations

import csv
import json

import pytest

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "size": 16}
POOLS = {"segmentation": ("scenes", ["seg_cnn", "seg_tiny=noisy"], "seg_tiny"),
         "detection": ("scene_boxes", ["det_cnn", "det_tiny=noisy"], "det_tiny")}


def _env(task: str, teacher_cache: str) -> list:
    dataset, teachers, student = POOLS[task]
    pairs = {"task": task, "dataset": dataset, "dataset_kwargs": json.dumps(TINY), "teachers": f"[{','.join(teachers)}]",
             "student": student, "teacher_cache_dir": teacher_cache, "teacher_epochs": 2, "max_steps": 3,
             "batch_size": 16, "probe_size": 16, "eval_batch_size": 32, "show_progress": "false", "device": "cpu"}
    return ["--env", *(f"{k}={v}" for k, v in pairs.items())]


@pytest.mark.parametrize("task", sorted(POOLS))
def test_compare_ranks_formula_baselines_on_a_dense_task(task, teacher_cache, tmp_path):
    from baselines.compare import main

    out = tmp_path / "cmp"
    assert main(["--policies", "aver,ca-mkd,ebkd,drop-worst", "--seeds", "0", "--out", str(out), "--no-progress",
                 *_env(task, teacher_cache)]) == 0
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["policy"] for r in rows) == ["aver", "ca-mkd", "drop-worst", "ebkd"]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 and r["steps"] == "3" for r in rows)


@pytest.mark.parametrize("task", sorted(POOLS))
def test_ppo_trains_on_a_dense_task(task, teacher_cache, tmp_path):
    from agents.train import main

    hyper = tmp_path / "ppo.json"  # one short rollout (the shipped n_steps is a whole run of episodes)
    hyper.write_text(json.dumps({"n_steps": 6, "batch_size": 6, "n_epochs": 1}))
    assert main(["--algo", "ppo", "--total-timesteps", "6", "--eval-episodes", "1", "--no-progress",
                 "--hyperparams", str(hyper), "--wandb", "disabled", "--out", str(tmp_path / "run"),
                 *_env(task, teacher_cache)]) == 0
    assert any((tmp_path / "run").iterdir())
