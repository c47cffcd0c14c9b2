"""The scenario leaderboard (`python -m baselines.compare --scenarios`) on tiny scenarios."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import baselines.compare.run as compare_run
from baselines.compare import main
from baselines.compare.leaderboard import leaderboard_rows
from baselines.report import PolicyStats
from tests.conftest import TINY_GLYPHS


def _env(teacher_cache):
    return ["--env", f"teacher_cache_dir={teacher_cache}", "teacher_epochs=2", "max_steps=4", "batch_size=32",
            "probe_size=32", "eval_batch_size=128", "device=cpu", "show_progress=false",
            f"dataset_kwargs={json.dumps(TINY_GLYPHS)}"]


def test_leaderboard_writes_table_png_json_and_resumes(teacher_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTKD_CACHE_DIR", str(tmp_path / "cache"))  # the oracles' cache
    out = tmp_path / "lb"
    argv = ["--scenarios", "unreliable,schedule", "--policies", "aver", "oracle", "best", "--seeds", "0", "1",
            "--out", str(out), "--eval-every", "2", "--no-progress", *_env(teacher_cache)]
    assert main(argv) == 0
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "leaderboard.json").read_text())
    cells = {(r["scenario"], r["policy"]): r for r in data["rows"]}
    assert set(cells) == {(s, p) for s in ("unreliable", "schedule") for p in ("aver", "oracle", "best")}
    for scenario in ("unreliable", "schedule"):
        assert cells[(scenario, "aver")]["delta"] == 0.0 and cells[(scenario, "aver")]["score"] == 0.0
        oracle = cells[(scenario, "oracle")]
        assert oracle["n"] == 2 and (oracle["score"] == pytest.approx(1.0) or oracle["delta"] == 0.0)
        with (out / scenario / "results.csv").open() as fh:
            assert len(list(csv.DictReader(fh))) == 6
    table = (out / "leaderboard.md").read_text()
    assert "| unreliable | oracle |" in table and "p (Holm, table)" in table

    # Resume: every row is there, so no run starts again and the table is the same.
    def no_run(task):
        raise AssertionError(f"finished run {task.policy} seed {task.seed} ran again")

    monkeypatch.setattr(compare_run, "run_task", no_run)
    assert main(argv) == 0
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == data["rows"]


def test_holm_runs_across_the_whole_table_and_the_score_is_relative_to_the_oracle():
    def st(policy, delta, p):
        return PolicyStats(policy, 20, 0.5, 0.01, 0.5, 0.01, 1.0, delta=delta, p_ttest=p, n_paired=20,
                           diff_std=0.01, mde=0.006)

    rows = leaderboard_rows({"a": [st("aver", None, None), st("oracle", 0.04, 0.001), st("best", 0.02, 0.02)],
                             "b": [st("aver", None, None), st("oracle", 0.10, 0.004), st("best", -0.05, 0.03)]})
    by = {(r.scenario, r.policy): r for r in rows}
    assert by[("a", "best")].score == pytest.approx(0.5) and by[("b", "best")].score == pytest.approx(-0.5)
    # Holm over the 4 p-values of the table: 0.001*4, 0.004*3, 0.02*2, then max(0.04, 0.03*1)
    assert [by[k].p_holm for k in (("a", "oracle"), ("b", "oracle"), ("a", "best"), ("b", "best"))] == \
        pytest.approx([0.004, 0.012, 0.04, 0.04])
    assert by[("a", "aver")].p is None and by[("a", "aver")].delta == 0.0
    lo, hi = by[("a", "best")].ci_low, by[("a", "best")].ci_high
    assert lo < 0.02 < hi and hi - 0.02 == pytest.approx(0.02 - lo)


def test_unknown_scenario_and_missing_reference(capsys, tmp_path):
    assert main(["--scenarios", "unrelaible", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'unreliable'" in capsys.readouterr().err
    assert main(["--scenarios", "unreliable", "--policies", "best", "--out", str(tmp_path / "y")]) == 2
    assert "paired against 'aver'; add it to --policies" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_leaderboard_logs_its_table_to_wandb_in_one_group(teacher_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    out = tmp_path / "lb"
    assert main(["--scenarios", "unreliable", "--policies", "aver,best", "--seeds", "0", "--out", str(out),
                 "--no-progress", *_env(teacher_cache)]) == 0
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/leaderboard_*.table.json"))
    assert len(tables) == 1, [str(p) for p in out.rglob("*.json")]
    table = json.loads(tables[0].read_text())
    assert table["columns"][:2] == ["scenario", "policy"]
    assert {(row[0], row[1]) for row in table["data"]} == {("unreliable", "aver"), ("unreliable", "best")}
    group = json.loads((out / "leaderboard_meta.json").read_text())["wandb_group"]
    assert len(list((out / "unreliable" / "wandb").glob("offline-run-*"))) == 3  # aver, best, the ranking
    records = [p.read_bytes() for p in out.rglob("offline-run-*/run-*.wandb")]
    assert len(records) == 4 and all(group.encode() in r for r in records)  # the three and the leaderboard
