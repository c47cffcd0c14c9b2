"""`python -m baselines.compare` end to end on a tiny synthetic config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from baselines import POLICIES
from baselines.compare import CompareOptions, main, run_compare

ALL_FORMULA = "aver,ca-mkd,ebkd,aekd,best,random,no-kd"


def _rows(out: Path):
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def config_file(synthetic_config, tmp_path):
    path = tmp_path / "env.json"
    path.write_text(json.dumps(synthetic_config().to_dict()))
    return str(path)


def test_compare_writes_all_artefacts_in_parallel_and_resumes(config_file, synthetic_config, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--policies", ALL_FORMULA, "--seeds", "0", "1", "--env-config", config_file, "--out", str(out),
            "--eval-every", "4", "--jobs", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("results.csv", "summary.md", "curves.png", "weights.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = _rows(out)
    assert sorted((r["policy"], int(r["seed"])) for r in rows) == sorted(
        (p, s) for p in ALL_FORMULA.split(",") for s in (0, 1))
    summary = (out / "summary.md").read_text()
    for name in ALL_FORMULA.split(","):
        assert f"| {name} |" in summary and f"| {name} |" in printed
    assert "beats AVER" in summary and "python -m baselines.compare --policies" in summary
    no_kd = next(r for r in rows if r["policy"] == "no-kd")
    assert float(no_kd["w_logit[mlp]"]) == 0.0 and int(no_kd["steps"]) == 8
    aver = next(r for r in rows if r["policy"] == "aver" and r["seed"] == "0")
    curve = json.loads((out / "runs" / "aver__seed0.json").read_text())
    assert curve["curve_steps"] == [0, 4, 8] and float(aver["val_acc"]) == pytest.approx(curve["curve_val_acc"][-1])

    # Rerun: every row is finished, nothing runs again, the results are unchanged.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert main(argv[:-3] + ["--no-progress"]) == 0
    assert _rows(out) == rows
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps

    # A worker process gives the same result as an in-process run of the same policy and seed.
    solo = run_compare(CompareOptions(policies=["aver"], seeds=[0], env_config=synthetic_config(),
                                      out=str(tmp_path / "solo"), eval_every=4, progress=False))
    assert solo[0].test_mean == pytest.approx(float(aver["test_acc"]), abs=1e-6)

    # Growing the comparison runs only the new rows; other settings are refused.
    assert main(["--policies", "aver", "--seeds", "0", "1", "2", "--env-config", config_file, "--out", str(out),
                 "--eval-every", "4", "--no-progress"]) == 0
    assert len(_rows(out)) == len(rows) + 1
    capsys.readouterr()
    assert main(["--policies", "aver", "--seeds", "0", "--env-config", config_file, "--out", str(out),
                 "--eval-every", "2", "--no-progress"]) == 2
    assert "other settings (eval_every: 4 -> 2)" in capsys.readouterr().err


def test_unknown_policy_is_a_clear_error(tmp_path, capsys):
    assert main(["--policies", "aver,foo", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown policy 'foo'" in err and str(sorted(POLICIES)) in err
    assert not (tmp_path / "x").exists()


# --- RL policies through the agents contract ---------------------------------------------------
class _FixedPreferencePolicy:
    """An agent-like policy honouring the contract: env overrides + predict(obs) -> action."""

    algo = "fixed-rl"
    env_overrides = {"granularity": "sample", "separate_feature_weights": True, "action_transform": "linear"}

    def __init__(self, preference):
        self.preference = np.asarray(preference, dtype=np.float32)

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        assert obs.ndim == 2 and deterministic
        return np.tile(np.concatenate([self.preference, self.preference]), (obs.shape[0], 1)), state


@pytest.fixture
def fake_agents_api(monkeypatch):
    """`agents.api` per the contract; its 'training' writes a preference derived from the seed."""
    calls = []

    def train(algo, *, env_config, seed=0, total_timesteps=None, out_dir="runs", wandb_mode="disabled",
              wandb_project="mtkd-rl", wandb_group=None, hyperparams=None, eval_episodes=0, show_progress=True):
        calls.append((algo, seed, wandb_group))
        run = Path(out_dir) / f"{algo}_{seed}"
        run.mkdir(parents=True)
        pref = [1.0, -1.0, -1.0] if seed % 2 == 0 else [-1.0, 1.0, -1.0]
        (run / "policy.json").write_text(json.dumps({"algo": algo, "preference": pref}))
        return run

    def load_policy(path):
        blob = json.loads((Path(path) / "policy.json").read_text())
        if blob["algo"] == "broken-rl":
            raise RuntimeError("cannot load this agent")
        return _FixedPreferencePolicy(blob["preference"])

    from agents import api

    monkeypatch.setattr(api, "ALGOS", ("fixed-rl", "broken-rl"))
    monkeypatch.setattr(api, "train", train)
    monkeypatch.setattr(api, "load_policy", load_policy)
    return calls


def test_rl_policies_are_trained_once_then_evaluated_on_the_same_seeds(fake_agents_api, synthetic_config, tmp_path):
    out = tmp_path / "cmp"
    opts = dict(policies=["aver", "fixed-rl"], seeds=[0, 1], env_config=synthetic_config(), out=str(out),
                eval_every=4, train_seeds=[10, 11], progress=False)
    run_compare(CompareOptions(**opts))
    assert [c[:2] for c in fake_agents_api] == [("fixed-rl", 10), ("fixed-rl", 11)]
    group = json.loads((out / "compare.json").read_text())["wandb_group"]
    assert fake_agents_api[0][2] == group
    rows = {(r["policy"], r["seed"]): r for r in _rows(out)}
    # Seed s uses the agent of train seed train_seeds[s % 2]: seed 0 -> 10 (teacher 0), 1 -> 11 (teacher 1).
    assert rows[("fixed-rl", "0")]["agent_seed"] == "10" and rows[("fixed-rl", "1")]["agent_seed"] == "11"
    assert float(rows[("fixed-rl", "0")]["w_logit[mlp]"]) == pytest.approx(1.0)
    assert float(rows[("fixed-rl", "1")]["w_logit[cnn=random]"]) == pytest.approx(1.0)
    manifest = json.loads((out / "agents.json").read_text())
    assert set(manifest["fixed-rl"]) == {"10", "11"}

    # Resume: agents are reused, not retrained. --agent-dir loads a previous comparison's agents.
    run_compare(CompareOptions(**{**opts, "seeds": [0, 1, 2]}))
    other = CompareOptions(**{**opts, "out": str(tmp_path / "reuse"), "agent_dir": str(out)})
    run_compare(other)
    assert len(fake_agents_api) == 2
    reused = {(r["policy"], r["seed"]): r["test_acc"] for r in _rows(tmp_path / "reuse")}
    assert reused[("fixed-rl", "1")] == rows[("fixed-rl", "1")]["test_acc"]

    with pytest.raises(ValueError, match="no trained 'fixed-rl' agent for train seed 10"):
        run_compare(CompareOptions(**{**opts, "out": str(tmp_path / "none"), "agent_dir": str(tmp_path / "empty")}))


def test_a_failing_run_keeps_the_others(fake_agents_api, synthetic_config, tmp_path, capsys):
    out = tmp_path / "cmp"
    opts = CompareOptions(policies=["broken-rl", "aver"], seeds=[0], env_config=synthetic_config(), out=str(out),
                          eval_every=8, progress=False)
    with pytest.raises(RuntimeError, match="1 run\\(s\\) failed .*broken-rl seed 0: RuntimeError: cannot load"):
        run_compare(opts)
    assert [r["policy"] for r in _rows(out)] == ["aver"]


def test_summary_statistics_are_paired_over_seeds():
    from scipy import stats

    from baselines.report import holm, policy_stats, summary_table, verdict

    aver = [0.90, 0.92, 0.91, 0.93, 0.90]
    good = [0.93, 0.95, 0.93, 0.96, 0.94]     # +2 to +4 pp on every seed, +3 pp on average
    tie = list(aver)
    rows = [{"policy": p, "seed": s, "test_acc": a, "val_acc": a, "steps_per_s": 10.0}
            for p, accs in (("aver", aver), ("good", good), ("tie", tie)) for s, a in enumerate(accs)]
    st = {s.policy: s for s in policy_stats(rows, ["aver", "good", "tie"])}
    diff = np.subtract(good, aver)
    assert st["good"].delta == pytest.approx(diff.mean())
    assert st["good"].p_ttest == pytest.approx(stats.ttest_rel(good, aver).pvalue)
    assert st["good"].p_wilcoxon == pytest.approx(stats.wilcoxon(diff).pvalue)
    assert (st["good"].wins, st["good"].ties, st["good"].losses) == (5, 0, 0)
    assert (st["tie"].wins, st["tie"].ties, st["tie"].losses, st["tie"].p_ttest) == (0, 5, 0, 1.0)
    assert st["aver"].delta is None and st["good"].test_std == pytest.approx(np.std(good, ddof=1))
    assert holm([0.01, 0.04, None, 0.03]) == [0.03, pytest.approx(0.06), None, pytest.approx(0.06)]
    ranked = policy_stats(rows, ["aver", "good", "tie"])
    assert [s.policy for s in ranked][0] == "good"
    assert "| 1 | good | 5 | 94.20 ± 1.30 |" in summary_table(ranked)
    assert verdict(ranked).startswith("Beats AVER: good (+3.00 pp")


def test_agents_of_several_train_seeds_train_side_by_side(synthetic_config, tmp_path):
    """With --jobs 2 the agents to train are jobs of the executor: both train seeds in worker
    processes, each recorded in agents.json as it finishes."""
    out = tmp_path / "cmp"
    run_compare(CompareOptions(policies=["aver", "a2c"], seeds=[0], env_config=synthetic_config(), out=str(out),
                               eval_every=4, train_seeds=[10, 11], train_timesteps=16, jobs=2, progress=False))
    manifest = json.loads((out / "agents.json").read_text())
    assert set(manifest["a2c"]) == {"10", "11"}
    assert all((out / path).exists() for path in manifest["a2c"].values())
    assert {(r["policy"], r["agent_seed"]) for r in _rows(out)} == {("aver", ""), ("a2c", "10")}
