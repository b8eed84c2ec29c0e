"""The bad-input corpus (tests/data/bad/, listed in its README): every case gives a one-line error
that names file/row/field, or a reject with a reason, and never destroys an earlier build's output."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from prefdata.builder import run_build
from prefdata.engines import ModelError
from prefdata.recipe import RecipeError
from prefdata.schemas.errors import InputError, PrefdataError
from prefdata.schemas.writers import TEMP_MARKER

from .conftest import FIXTURES, REPO

BAD = FIXTURES / "bad"

# file, kind, extra column mapping, expected (reason, field, row) of the reject, usable rows left
ROW_CASES = [
    ("invalid_json.jsonl", "pairs", {}, ("invalid_json", None, 1), 2),
    ("truncated.jsonl", "pairs", {}, ("invalid_json", None, 2), 2),
    ("empty_prompt.jsonl", "pairs", {}, ("empty_text", "prompt", 1), 2),
    ("empty_chosen.jsonl", "pairs", {}, ("empty_text", "chosen", 1), 2),
    ("empty_rejected.jsonl", "pairs", {}, ("empty_text", "rejected", 2), 2),
    ("chosen_equals_rejected.jsonl", "pairs", {}, ("chosen_equals_rejected", "rejected", 1), 1),
    ("wrong_types.jsonl", "pairs", {}, ("wrong_type", "chosen", 1), 2),
    ("not_utf8.jsonl", "pairs", {}, ("not_utf8", None, 1), 2),
    ("nan_scores.jsonl", "pairs", {"chosen_score": "cs", "rejected_score": "rs"}, ("nan_score", "cs", 1), 2),
    ("duplicate_ids.jsonl", "pairs", {}, ("duplicate_id", "id", 2), 2),
    ("hh_no_assistant.jsonl", "hh", {}, ("no_assistant_turn", "chosen", 1), 1),
    ("not_an_object.jsonl", "pairs", {}, ("not_an_object", None, 1), 1),
    ("bad_role.jsonl", "pairs", {}, ("bad_role", "prompt[0].role", 1), 1),
]


def _recipe(source, out, kind="pairs", columns=None, **extra):
    return {"name": "bad", "source": {"path": str(source), "kind": kind, "columns": columns or {}},
            "output": {"dir": str(out)}, **extra}


def _snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier_build(tmp_path):
    """A finished build in `out`: an error in a later build must leave it byte for byte."""
    out = tmp_path / "out"
    run_build(_recipe(FIXTURES / "pairs_small.jsonl", out), limit=2)
    return out, _snapshot(out)


@pytest.mark.parametrize("name,kind,columns,expected,kept", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_row_is_rejected_with_reason_and_good_rows_kept(tmp_path, name, kind, columns, expected, kept):
    result = run_build(_recipe(BAD / name, tmp_path / "out", kind, columns))
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["reason"], r["field"], r["row"]) for r in rejects] == [expected]
    assert rejects[0]["file"] == str(BAD / name) and rejects[0]["payload"]  # the row itself is kept
    assert result.stats["output"]["rows"] == kept
    from prefdata.schemas.errors import Reject
    from prefdata.types import RejectReason

    reject = Reject(stage=rejects[0]["stage"], reason=RejectReason(expected[0]), detail=rejects[0]["detail"],
                    file=rejects[0]["file"], row=rejects[0]["row"], field=rejects[0]["field"])
    message = str(reject.to_error())  # what strict mode / the CLI would print
    assert "\n" not in message and f"{name}: row {expected[2]}" in message and expected[0] in message


EXTRA_COLUMNS = "extra_columns.jsonl"
LONG_PROMPT = "long_prompt.jsonl"


def test_extra_columns_are_ignored(tmp_path):
    result = run_build(_recipe(BAD / EXTRA_COLUMNS, tmp_path / "out"))
    assert result.stats["output"]["rows"] == 2 and result.stats["output"]["rejects"] == 0
    assert "lang" not in result.dataset.column_names


def test_prompt_longer_than_the_context_is_rejected(tmp_path, hf_engine):
    recipe = _recipe(BAD / LONG_PROMPT, tmp_path / "out", "prompts",
                     engines={"policy": {"backend": "transformers", "dtype": "float32"}},
                     stages=[{"type": "on_policy", "n": 2, "sampling": {"max_tokens": 4}}])
    result = run_build(recipe, engines={"policy": hf_engine})
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["stage"], r["reason"], r["field"], r["row_id"]) for r in rejects] == \
        [("on_policy", "prompt_too_long", "prompt", "long-0")]
    assert "the policy's context is 2048" in rejects[0]["detail"]
    assert result.stats["output"]["rows"] == 0


def _error_cases(tmp_path):
    output_file = tmp_path / "output_is_a_file"
    output_file.write_text("keep me")
    return {
        "missing_column": (_recipe(BAD / "missing_column.jsonl", None), InputError,
                           r"missing_column.jsonl, field 'rejected': no row has the column"),
        "misnamed_column": (_recipe(BAD / "misnamed_column.jsonl", None, "prompts"), InputError,
                            r"misnamed_column.jsonl, field 'prompt': no row has the column"),
        "truncated_parquet": (_recipe(BAD / "truncated.parquet", None), InputError,
                              r"truncated.parquet: not a readable Parquet file"),
        "recipe_unknown_key": (BAD / "recipe_unknown_key.toml", RecipeError,
                               r"recipe_unknown_key.toml: seeed: Extra inputs are not permitted"),
        "recipe_missing_file": (BAD / "recipe_missing_file.toml", InputError, r"does_not_exist.jsonl: file not found"),
        "recipe_invalid_toml": (BAD / "recipe_invalid_toml.toml", RecipeError, r"recipe_invalid_toml.toml: not valid toml"),
        "model_without_weights": (_recipe(FIXTURES / "prompts_small.jsonl", None, "prompts",
                                          engines={"policy": {"backend": "transformers",
                                                              "model": str(BAD / "model_without_weights")}},
                                          stages=[{"type": "on_policy"}]), ModelError,
                                  r"model_without_weights: model folder has no weights"),
        "output_is_a_file": (_recipe(FIXTURES / "pairs_small.jsonl", output_file), InputError,
                             r"output_is_a_file: output path exists and is not a directory"),
    }


ERROR_NAMES = ["missing_column", "misnamed_column", "truncated_parquet", "recipe_unknown_key", "recipe_missing_file",
               "recipe_invalid_toml", "model_without_weights", "output_is_a_file"]


@pytest.mark.parametrize("case", ERROR_NAMES)
def test_unusable_input_is_one_line_error_and_earlier_output_survives(tmp_path, earlier_build, monkeypatch, case):
    monkeypatch.chdir(REPO)  # the recipe files name paths relative to the repository
    out, before = earlier_build
    recipe, error, pattern = _error_cases(tmp_path)[case]
    if isinstance(recipe, dict) and recipe["output"]["dir"] == "None":
        recipe["output"]["dir"] = str(out)
    with pytest.raises(error) as info:
        run_build(recipe, output=None if isinstance(recipe, dict) else out)
    assert isinstance(info.value, PrefdataError)
    message = str(info.value)
    assert "\n" not in message
    assert __import__("re").search(pattern, message), message
    assert _snapshot(out) == before


def test_disk_full_is_one_line_error_and_earlier_output_survives(earlier_build):
    """No space left, simulated with a file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG)."""
    out, before = earlier_build
    recipe = out.parent / "full.toml"
    recipe.write_text(f'name = "full"\n[source]\npath = "{FIXTURES / "pairs_small.jsonl"}"\nkind = "pairs"\n')

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # Python ignores SIGXFSZ, so writes raise

    done = subprocess.run([sys.executable, "-m", "prefdata", "build", str(recipe), "-o", str(out), "-q"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
                          preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip()
    assert "\n" not in error and "train-00000.parquet: cannot write, no space left" in error, error
    # the earlier (2-row) build is intact, no temporary file left; the failed attempt is in the build log
    after = _snapshot(out)
    assert after.pop(".prefdata/build.log", b"").count(b"=== prefdata build") == 1 + before.get(
        ".prefdata/build.log", b"").count(b"=== prefdata build")
    assert after == {k: v for k, v in before.items() if k != ".prefdata/build.log"}
    assert not [p for p in out.rglob(f"*{TEMP_MARKER}*")]
    assert json.loads((out / "stats.json").read_text())["output"]["rows"] == 2


def _bad_files_in(value) -> set[str]:
    """Names of the tests/data/bad/ entries a case's recipe (a dict, or a recipe file) refers to."""
    if isinstance(value, dict):
        return set().union(*(_bad_files_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_bad_files_in(v) for v in value))
    path = __import__("pathlib").Path(str(value))
    return {path.name} if path.parent == BAD else set()


def test_corpus_has_every_listed_case(tmp_path):
    """Every entry of tests/data/bad/ is listed in its README and used by a case above; the README's
    table also lists the two cases the tests make (an output path that is a file, a full disk)."""
    rows = [line for line in (BAD / "README.md").read_text().splitlines() if line.startswith("| ")][1:]  # no header
    listed = {line.split("`")[1] for line in rows if line.startswith("| `")}
    made_by_tests = [line for line in rows if line.startswith("| (made by the test)")]
    on_disk = {p.name for p in BAD.iterdir() if p.name != "README.md"}
    error_cases = _error_cases(tmp_path)
    assert ERROR_NAMES == list(error_cases)  # every error case is run
    used = {c[0] for c in ROW_CASES} | {EXTRA_COLUMNS, LONG_PROMPT} | _bad_files_in([c[0] for c in error_cases.values()])
    assert on_disk == listed == used
    assert len(on_disk) == 22 and len(made_by_tests) == 2 and len(rows) == 24
