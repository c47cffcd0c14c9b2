"""The learning curve of a run: per-episode series and the PNG (`agents.curves`)."""

from __future__ import annotations

import json

import numpy as np

from agents import curves


def _rows(n=12):
    rows = []
    for i in range(1, n + 1):
        rows.append({"step/reward": 0.0, "global_step": i})
        rows.append({"episode/index": i, "episode/return": 0.1 * i, "episode/weight_logit/0_a": 0.5 - 0.02 * i,
                     "episode/weight_logit/1_b": 0.5 + 0.02 * i, "episode/advantage_test": 0.001 * i,
                     "episode/advantage_val": 0.002 * i})
    return rows


def test_series_and_plot(tmp_path):
    series = curves.episode_series(_rows())
    assert np.array_equal(series["episode/index"], np.arange(1, 13))
    assert np.allclose(curves._smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    assert curves.plot_learning_curve(_rows(), tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 0
    assert not curves.plot_learning_curve([{"step/reward": 1.0}], tmp_path / "none.png")


def test_cli(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()))
    assert curves.main([str(run)]) == 0 and (run / curves.CURVE_NAME).is_file()
    assert curves.main([str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
