"""The CLI: Typer's CliRunner in-process, and one real `prefdata build` subprocess on vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import prefdata
from prefdata.cli import app

from .conftest import FIXTURES

RECIPE = """
name = "cli"
[source]
path = "{src}"
[engines.policy]
backend = "{backend}"
dtype = "float32"
[[stages]]
type = "on_policy"
n = 2
[stages.sampling]
max_tokens = 10
temperature = 1.0
"""


def _write_recipe(tmp_path, backend):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(src=FIXTURES / "prompts_small.jsonl", backend=backend))
    return path


def test_cli_build_in_process(tmp_path):
    recipe = _write_recipe(tmp_path, "transformers")
    result = CliRunner().invoke(app, ["build", str(recipe), "--output", str(tmp_path / "out"), "--limit", "2", "-q", "-v"])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["source"]["rows_ok"] == 2
    assert len(prefdata.load(tmp_path / "out")) == stats["output"]["rows"]
    # -v: the engine library's output (transformers' weight-loading bar) is shown and in the build log
    log = (tmp_path / "out" / ".prefdata" / "build.log").read_text()
    assert "Loading weights" in log and "Loading weights" in result.output


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\npath = "x.jsonl"\nbogus = 1\n')
    result = CliRunner().invoke(app, ["build", str(bad)])
    assert result.exit_code == 2
    assert "source.bogus: Extra inputs are not permitted" in result.output
    assert "Traceback" not in result.output
    missing_input = _write_recipe(tmp_path, "transformers")
    result = CliRunner().invoke(app, ["build", str(missing_input), "--input", str(tmp_path / "nope.jsonl"), "-q"])
    assert result.exit_code == 2 and "nope.jsonl: file not found" in result.output


@pytest.mark.vllm
def test_cli_build_subprocess_with_vllm(tmp_path):
    recipe = _write_recipe(tmp_path, "vllm")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", str(recipe), "-o", str(out), "--limit", "3", "-q"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["engines"]["policy"]["backend"] == "vllm"
    ds = prefdata.load(out)
    assert len(ds) == stats["output"]["rows"]
    assert all(r["chosen"] != r["rejected"] for r in ds)


def test_no_cache_switch_turns_the_request_cache_off(tmp_path, monkeypatch):
    seen = {}

    def fake_run_build(recipe, **kwargs):  # orchestration only: what the CLI hands the build API
        seen.update(kwargs)
        from prefdata.schemas.errors import PrefdataError

        raise PrefdataError("stop here")

    import prefdata.builder  # noqa: F401 - load the module, then patch its run_build

    monkeypatch.setattr(sys.modules["prefdata.builder"], "run_build", fake_run_build)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[source]\npath = "{FIXTURES / "pairs_small.jsonl"}"\nkind = "pairs"\n')
    result = CliRunner().invoke(app, ["build", str(recipe), "--no-cache", "-q"])
    assert result.exit_code == 2 and seen["cache"] is False
    CliRunner().invoke(app, ["build", str(recipe), "-q"])
    assert seen["cache"] is None  # the recipe's `output.cache` decides (on by default)


def test_error_text_in_square_brackets_is_shown(tmp_path):
    """Rich markup must not eat `[source.columns]` from the missing-column hint."""
    src = tmp_path / "p.jsonl"
    src.write_text('{"question": "a"}\n{"question": "b"}\n')
    recipe = _write_recipe(tmp_path, "transformers")
    result = CliRunner().invoke(app, ["build", str(recipe), "--input", str(src), "-q", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "(map it under [source.columns])" in result.output


def test_empty_input_exits_non_zero_in_one_line_without_an_engine(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    recipe = _write_recipe(tmp_path, "vllm")
    proc = subprocess.run([sys.executable, "-m", "prefdata", "build", str(recipe), "--input", str(empty),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no rows to build from" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_set_and_overwrite_options_reach_the_build(tmp_path):
    src = FIXTURES / "pairs_small.jsonl"
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "p"\n[source]\npath = "{src}"\nkind = "pairs"\n')
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out), "-q", "--set", "seed=5",
                                      "--set", "output.shard_size=3"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["seed"] == 5 and recorded["output"]["shard_size"] == 3
    assert recorded["overrides"] == ["seed=5", "output.shard_size=3"]
    result = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "recipe.json").read_text())["seed"] == 0
    bad = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out), "-q", "--set", "output.shard_size=0"])
    assert bad.exit_code == 2 and "output.shard_size: Input should be greater than or equal to 1" in bad.output


def test_help_texts_print_square_brackets_literally():
    """Help texts are not Rich markup: "[push] table" stays, in every command's help."""
    import re

    import typer

    result = CliRunner().invoke(app, ["build", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "push it if the recipe has a [push] table" in text
    assert "Skip the recipe's [push] table" in text
    group = typer.main.get_command(app)
    checked = 0
    for name, command in group.commands.items():
        helps = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        shown = " ".join(CliRunner().invoke(app, [name, "--help"]).output.split())
        for token in re.findall(r"\[[^\]\s]+\]", " ".join(helps)):
            assert token in shown, (name, token)
            checked += 1
    assert checked >= 4
