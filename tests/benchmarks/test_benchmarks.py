"""The benchmarks run end to end on tiny inputs and write every row (the figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_loader_benchmark_smoke(tmp_path):
    out = tmp_path / "loader.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.loader", "--device", "cpu", "--batches", "3",
                           "--workers", "1", "--images", "512", "--batch", "32", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["device_loader_images_per_s"] > 0 and data["dataloader_images_per_s"] > 0


def test_step_overhead_benchmark_has_a_row_per_method(tmp_path, teacher_cache):
    """Every method's step runs in the benchmark (the figures themselves are not asserted)."""
    from benchmarks.policy_steps import method_names

    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.step_overhead", "--config", "tiny", "--device", "cpu",
                           "--batch", "16", "--warmup", "1", "--blocks", "1", "--per-block", "6",
                           "--teacher-cache-dir", teacher_cache, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert sorted(data["ratio_to_floor"]) == sorted(method_names())
    assert all(r > 0 for r in data["ratio_to_floor"].values())
    assert "mmkd" in proc.stdout and "rmts" in proc.stdout
    assert data["tflop_per_s_a"] > 0 and data["tflop_per_s_b"] > 0  # FLOPs counted, over the measured time
    assert data["runs"][0]["results"]["b_env_teacher"]["gflop_per_step"] >= \
        data["runs"][0]["results"]["a_floor"]["gflop_per_step"]  # the env adds its probe forward


def test_vector_env_benchmark_prints_ratios_for_every_mode(tmp_path, teacher_cache):
    out = tmp_path / "vector.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.vector_env", "--config", "tiny", "--device", "cpu",
                           "--k", "1", "2", "--warmup", "1", "--rounds", "1", "--per-block", "2", "--async-max-k", "2",
                           "--teacher-cache-dir", teacher_cache, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert sorted((r["mode"], r["k"]) for r in data["rows"]) == [(m, k) for m in ("async", "batched", "sync")
                                                                 for k in (1, 2)]
    assert all(r["env_steps_per_s"] > 0 and r["ratio_to_single"] > 0 for r in data["rows"])
    assert all("ratio_to_sync" in r for r in data["rows"] if r["mode"] != "sync")
    assert "load average" in proc.stdout


def test_speedup_benchmark_times_every_worker_interleaved(tmp_path, teacher_cache):
    """This tree against itself as the baseline: every worker is timed in every block, and a
    directory that is not a checkout of the project is one error line."""
    out = tmp_path / "speedup.json"
    env = ["--env", f"teacher_cache_dir={teacher_cache}", "teacher_epochs=3", "batch_size=16", "probe_size=32"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speedup", "--baseline", ".", "--warmup", "1",
                           "--blocks", "2", "--per-block", "2", "--json", str(out), *env],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert sorted(data["results"]) == ["default/baseline", "default/this", "default/this, no teacher cache",
                                       "ppo-shipped/baseline", "ppo-shipped/this"]
    assert all(len(r["block_ms"]) == 2 and r["ms_per_step"] > 0 for r in data["results"].values())
    assert data["speedup"]["default"] > 0 and data["speedup"]["ppo-shipped"] > 0
    bad = subprocess.run([sys.executable, "-m", "benchmarks.speedup", "--baseline", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--baseline" in bad.stderr


def test_credit_signal_measures_both_credits_per_third(scenario_config):
    from benchmarks.credit_signal import credit_signal

    figures = credit_signal(scenario_config("specialists", max_steps=6), seed=0, every=1)
    assert figures["steps"] == 6 and figures["phases"] == [[0, 2], [2, 4], [4, 6]]
    for target in ("probe", "label"):
        rows = figures["targets"][target]
        assert len(rows) == 3 and all(0 <= r["expert_first"] <= 1 for r in rows)
    # The label credit is the teacher's agreement with the label: it rises where the teacher's CE falls.
    assert all(r["corr_neg_ce"] > 0.5 for r in figures["targets"]["label"])
    assert figures["right_weight"] == [0.25] * 3  # AVER


def test_credit_signal_of_a_trained_agent_reports_its_weights(scenario_config, tmp_path):
    from agents import api
    from benchmarks.credit_signal import credit_signal

    run = api.train("ppo-credit", env_config=scenario_config("specialists"), total_timesteps=4, out_dir=str(tmp_path),
                    hyperparams={"n_steps": 4, "batch_size": 4, "n_epochs": 1, "policy_kwargs": {"hidden": 8}},
                    show_progress=False)
    figures = credit_signal(scenario_config("specialists", max_steps=3), seed=1, every=1, agent=str(run))
    assert figures["agent"] == str(run) and len(figures["right_weight"]) == 3
    assert all(abs(w - 0.25) < 0.02 for w in figures["right_weight"])  # barely trained: ≈ uniform per sample


def test_credit_signal_refuses_a_dense_scenario_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.credit_signal", "--scenario", "seg_unreliable"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the credits are for classification" in proc.stderr
