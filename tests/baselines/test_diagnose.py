"""`python -m baselines.diagnose`: the fork study runs on a tiny config and its numbers are consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baselines import diagnose


def _args(cfg_path, out, *extra):
    return ["--env-config", str(cfg_path), "--seeds", "0", "1", "--forks", "2", "--horizons", "1", "epoch", "rest",
            "--out", str(out), "--no-progress", *extra]


@pytest.fixture
def config_file(synthetic_config, tmp_path):
    path = tmp_path / "env.json"
    path.write_text(json.dumps(synthetic_config(max_steps=8).to_dict()))
    return path


def test_diagnose_writes_table_json_and_plot(config_file, tmp_path, capsys):
    out = tmp_path / "diag"
    assert diagnose.main(_args(config_file, out)) == 0
    table = capsys.readouterr().out
    assert "twin_val_acc" in table and "final accuracy B - A" in table
    result = json.loads((out / "diagnose.json").read_text())
    assert (out / "snr.png").stat().st_size > 0
    assert result["fork_steps"] == [0, 4] and len(result["records"]) == 4
    rows = {(r["reward"], r["horizon"]): r for r in result["summary"]}
    assert rows[("twin_val_acc", "rest")]["n"] == 4 and rows[("twin_val_acc", "1")]["n"] == 4
    # The paired accuracy reward summed to the end is exactly the final validation difference.
    for rec in result["records"]:
        diff = rec["final_val_b"] - rec["final_val_a"]
        assert rec["sums_b"]["twin_val_acc"][-1] - rec["sums_a"]["twin_val_acc"][-1] == pytest.approx(diff, abs=1e-6)
        assert rec["sums_a"]["twin_val_acc"][-1] == 0.0  # arm A is AVER: it is its own twin
    assert rows[("twin_val_acc", "rest")]["agree_val"] in (None, 1.0)


def test_diagnose_weight_vector_arms_and_bad_input(config_file, tmp_path, capsys):
    out = tmp_path / "diag"
    assert diagnose.main(_args(config_file, out, "--a", "0.2,0.4,0.4", "--b", "aver", "--rewards",
                               "final_val_acc,neg_loss")) == 0
    result = json.loads((out / "diagnose.json").read_text())
    assert {r["reward"] for r in result["summary"]} == {"final_val_acc", "neg_loss"}
    capsys.readouterr()
    for bad, message in ((["--b", "drop-wrst"], "did you mean 'drop-worst'"), (["--b", "1,2"], "expected 3 finite"),
                         (["--rewards", "nope"], "unknown reward"), (["--horizons", "soon"], "horizon 'soon'")):
        assert diagnose.main(_args(config_file, tmp_path / "bad", *bad)) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_horizon_parsing():
    assert diagnose.parse_horizon("epoch", 18) == 18 and diagnose.parse_horizon("3epochs", 18) == 54
    assert diagnose.parse_horizon("1", 18) == 1 and diagnose.parse_horizon("rest", 18) is None
    assert np.isclose(diagnose._agreement(np.array([1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])), 0.5)
