"""`python -m benchmarks.suite_targets`: the suite's targets from a leaderboard folder's rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks.suite_targets import main, targets


def _write(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["policy", "seed", "test_acc"])
        w.writeheader()
        w.writerows(rows)


def _rows(policies, seeds):
    return [{"policy": p, "seed": s, "test_acc": acc(s)} for p, acc in policies.items() for s in seeds]


def test_targets_pair_by_seed_and_judge_each(tmp_path):
    seeds = range(20)
    noise = np.random.default_rng(0).normal(0, 0.001, 20)  # sd 0.1 pp
    _write(tmp_path / "unreliable", _rows({"aver": lambda s: 0.60, "oracle": lambda s: 0.65 + noise[s],
                                           "best-constant": lambda s: 0.65 + noise[s]}, seeds))
    _write(tmp_path / "specialists", _rows({"aver": lambda s: 0.40, "best-constant": lambda s: 0.40,
                                            "oracle": lambda s: 0.42 + 0.01 * (s % 2)}, seeds))
    # schedule: the oracle is only on seeds 0..9, so only those pair
    _write(tmp_path / "schedule", _rows({"aver": lambda s: 0.50, "best-constant": lambda s: 0.50 + 0.001 * s},
                                        seeds) + _rows({"oracle": lambda s: 0.52 + 0.001 * s}, range(10)))
    f = targets(tmp_path)
    assert f["noise_floor_sd_pp"] == pytest.approx(100 * noise.std(ddof=1)) and f["noise_floor_met"]
    unreliable = f["scenarios"]["unreliable"]
    assert unreliable["oracle_vs_aver"]["delta_pp"] == pytest.approx(5 + 100 * noise.mean())
    assert unreliable["meets_3x_mde_and_p"]
    assert f["specialists_met"] is False  # +2.5 pp < 3 pp
    assert f["scenarios"]["specialists"]["oracle_vs_best_constant"]["delta_pp"] == pytest.approx(2.5)
    sched = f["scenarios"]["schedule"]["oracle_vs_best_constant"]
    assert sched["n"] == 10 and sched["delta_pp"] == pytest.approx(2.0) and f["schedule_met"] is False  # sd 0: no p
    assert "redundant" not in f["scenarios"]
    assert targets(tmp_path, seeds=[0, 1, 2])["scenarios"]["unreliable"]["oracle_vs_aver"]["n"] == 3


def test_cli_writes_json_and_refuses_a_folder_without_results(tmp_path, capsys):
    _write(tmp_path / "lb" / "unreliable", _rows({"aver": lambda s: 0.6, "oracle": lambda s: 0.6 + 0.01 * s}, range(4)))
    assert main(["--out", str(tmp_path / "lb"), "--json", str(tmp_path / "t.json")]) == 0
    assert "unreliable: oracle - AVER +1.50 pp" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["scenarios"]["unreliable"]["oracle_vs_aver"]["n"] == 4
    assert main(["--out", str(tmp_path / "none")]) == 2
    assert "holds no scenario results" in capsys.readouterr().err


def test_split_noise_on_a_tiny_scenario(teacher_cache, tmp_path, monkeypatch, capsys):
    from benchmarks.split_noise import main as split_main
    from tests.conftest import TINY_GLYPHS

    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--seeds", "0", "1", "--json", str(tmp_path / "s.json"), "--env", f"teacher_cache_dir={teacher_cache}",
            "teacher_epochs=2", "max_steps=3", "batch_size=32", "probe_size=32", "device=cpu",
            f"dataset_kwargs={json.dumps(TINY_GLYPHS)}"]
    assert split_main(argv) == 0
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["n_test"] == TINY_GLYPHS["n_test"] and len(figures["rows"]) == 2
    for row in figures["rows"]:
        d = row["disagreement"]
        assert 0 <= d <= 1 and row["split_sd_pp"] <= 100 * np.sqrt(d / figures["n_test"]) + 1e-9
    assert "split sd (n_test 128)" in capsys.readouterr().out
