"""The documentation: README length and links, the generated reference, the strict site build."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_at_most_250_lines_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make run" in text and "make test" in text


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), target


def test_config_reference_renders_every_env_config_field():
    import mtkd_env

    table = _hook().env_config_reference()
    names = [f.name for f in dataclasses.fields(mtkd_env.EnvConfig)]
    assert names
    for name in names:
        assert f"| `{name}` |" in table, name
    assert "| `batch_size` | `int` | `64` | >= 1 | Training batch size B." in table


def test_hyperparams_reference_renders_every_algo():
    from agents.algos import REGISTRY

    text = _hook().hyperparams_reference()
    for algo in REGISTRY:
        assert f"### `{algo}`" in text, algo
    assert "| `agent_step` |" in text  # MTKD-RL's declared hyperparameters


def test_cli_reference_renders_every_help():
    hook = _hook()
    for command, module in hook.CLIS:
        text = hook.cli_help(module)
        assert "usage:" in text and "-h, --help" in text, command


def test_include_rewrites_links_for_the_site(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "NOTES.md").write_text(
        "# Notes\n[a page](../docs/x.md#y) [data/](data/) [the code](../mtkd_env/env.py) [web](https://e.org)\n"
        "```\n[kept](../docs/x.md)\n```\n", encoding="utf-8")
    text = _hook().include("pkg/NOTES.md", shift=1, root=str(tmp_path))
    assert "## Notes" in text
    assert "[a page](x.md#y)" in text
    assert "`pkg/data/`" in text
    assert "the code (`mtkd_env/env.py`)" in text
    assert "[web](https://e.org)" in text
    assert "[kept](../docs/x.md)" in text  # code blocks are left alone


def test_mkdocs_build_is_strict_clean(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (the build runs in .ci/run: make docs)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr


def test_floors_table_renders_a_layering_module_generically(monkeypatch):
    import types

    hook = _hook()
    fake = types.ModuleType("mtkd_env.layering")
    fake.FLOORS = [("ground", ["runtime"]), ("data", ["data", "models"]), ("top", {"env": "the Gymnasium face"})]
    monkeypatch.setitem(sys.modules, "mtkd_env.layering", fake)
    table = hook.floors_table()
    assert "| ground | `runtime` |" in table
    assert "| data | `data`, `models` |" in table
    assert "`env`: the Gymnasium face" in table
    fake.markdown_table = lambda: "| own |\n|---|\n"
    assert hook.floors_table() == "| own |\n|---|\n"
