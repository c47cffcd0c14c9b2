"""W&B: offline mode writes a local run with the config, per-step/per-episode metrics and summary;
disabled writes nothing; the default mode is picked from local login state without network."""

from __future__ import annotations

import json
import re
import time

import pytest

from agents import api
from mtkd_env.runtime.tracking import default_wandb_mode


def _records(path):
    """Protobuf records of a `.wandb` file (W&B's LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, frag, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        size, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7:pos + 7 + size], pos + 7 + size
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            frag = payload
        elif kind == 3:
            frag += payload
        elif kind == 4:
            out.append(frag + payload)
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def test_offline_run_directory_has_expected_keys(synthetic_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = api.train("mtkd-rl", env_config=synthetic_config(), seed=3, total_timesteps=16,
                        out_dir=str(tmp_path / "runs"), wandb_mode="offline", wandb_project="proj",
                        wandb_group="grp", eval_episodes=1, show_progress=False)
    assert re.fullmatch(r"MultiTeacherKD-v0__mtkd-rl__3__\d+", run_dir.name)
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1  # a local run that `wandb sync` uploads later
    # wandb-core closes the file shortly after finish() returns; wait for the run's exit record.
    deadline = time.time() + 60
    while True:
        records = _records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
            break
        time.sleep(0.2)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == run_dir.name and run.project == "proj" and run.run_group == "grp"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert {"algo", "seed", "env", "hyperparams", "versions", "git", "total_timesteps", "command"} <= set(config)
    assert config["algo"] == "mtkd-rl" and config["env"]["granularity"] == "sample"
    history = set()
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history |= {"/".join(i.nested_key) or i.key for i in r.history.item}
    assert {"global_step", "step/reward", "step/student_acc", "step/loss", "weight/logit/2_mlp=noisy",
            "weight/feat/0_mlp", "episode/final_test_acc", "episode/final_val_acc", "agent/loss"} <= history
    summary = set()
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= {"/".join(u.nested_key) or u.key for u in r.summary.update}
    assert "summary/eval/policy_test_acc_mean_std" not in summary  # lists are not W&B summary scalars
    assert {"summary/num_timesteps", "summary/episodes", "summary/eval/mean_weight_logit/mlp=noisy"} <= summary
    assert config["run_name"] == run_dir.name
    assert (files[0].parent / "files" / "model.zip").is_file()  # uploaded with the run by `wandb sync`


def test_disabled_writes_nothing_to_wandb(synthetic_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    run_dir = api.train("mtkd-rl", env_config=synthetic_config(), total_timesteps=4, out_dir=str(tmp_path / "runs"),
                        wandb_mode="disabled", show_progress=False)
    assert not (run_dir / "wandb").exists() and not (tmp_path / "wandb_dir").exists()


@pytest.mark.parametrize("env, netrc, expected", [
    ({"WANDB_MODE": "disabled"}, None, "disabled"),
    ({"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}, None, "offline"),
    ({"WANDB_API_KEY": "x" * 40}, None, "online"),
    ({}, "machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n", "online"),
    ({}, "machine example.com\n  login user\n  password secret\n", "offline"),
    ({}, None, "offline"),
])
def test_default_mode_follows_local_login(env, netrc, expected, tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "netrc"
    if netrc is not None:
        path.write_text(netrc)
        path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    assert default_wandb_mode() == expected
