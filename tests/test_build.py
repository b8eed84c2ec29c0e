"""The build API: recipe -> stages -> Parquet shards, rejects, stats; errors that name the key."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

import prefdata
from prefdata.build import run_build
from prefdata.recipe import RecipeError, load_recipe
from prefdata.schemas.errors import InputError
from prefdata.schemas.pair import CORE_PAIR_COLUMNS, schema_version_of

from .conftest import FIXTURES, REPO


def _recipe(tmp_path, **overrides):
    recipe = {
        "name": "t",
        "source": {"path": str(FIXTURES / "prompts_small.jsonl")},
        "engines": {"policy": {"backend": "transformers", "dtype": "float32"}},
        "stages": [{"type": "on_policy", "n": 2, "sampling": {"max_tokens": 12, "temperature": 1.0}}],
        "output": {"dir": str(tmp_path / "out"), "shard_size": 2},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def built(hf_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    result = run_build(_recipe(tmp), engines={"policy": hf_engine})
    return result


def test_build_writes_shards_rejects_stats_and_recipe(built):
    out = built.out_dir
    shards = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["train-00000.parquet", "train-00001.parquet"]  # 4 prompts, 2 per shard
    for name in ("rejects.parquet", "stats.json", "recipe.json"):
        assert (out / name).is_file()
    assert not list(out.rglob(".*.tmp-*"))
    stats = json.loads((out / "stats.json").read_text())
    stage = stats["stages"][0]
    assert stats["source"]["rows_ok"] == 4 and stage["rows_in"] == 4
    assert stage["rows_out"] == stats["output"]["rows"]
    assert stage["rows_out"] + stage["drops"].get("no_pair", 0) == 4
    assert stats["output"]["rejects"] == pq.read_table(out / "rejects.parquet").num_rows
    assert json.loads((out / "recipe.json").read_text())["stages"][0]["n"] == 2
    for shard in shards:
        table = pq.read_table(shard)
        assert schema_version_of(table.schema) == "1.0"
        assert table.column("id").to_pylist() == sorted(table.column("id").to_pylist())


def test_loaded_dataset_is_valid(built):
    ds = prefdata.load(built.out_dir)
    assert list(ds.column_names) == list(CORE_PAIR_COLUMNS)
    assert len(ds) == built.stats["output"]["rows"] and len(ds) > 0
    for row in ds:
        assert row["chosen"] != row["rejected"]
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
    assert {r["prompt_id"] for r in ds} <= {"p-0", "p-1", "p-2", "p-3"}


def test_rebuild_with_fewer_shards_removes_stale_ones(built, hf_engine, tmp_path):
    recipe = _recipe(tmp_path)
    run_build(recipe, engines={"policy": hf_engine})
    recipe["output"]["shard_size"] = 10
    result = run_build(recipe, engines={"policy": hf_engine}, limit=2)
    assert [p.name for p in (result.out_dir / "data").glob("*.parquet")] == ["train-00000.parquet"]


def test_pairs_source_without_stages_converts_hh(tmp_path):
    src = tmp_path / "hh.jsonl"
    rows = [
        {"id": "h0", "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},
        {"id": "h1", "chosen": "\n\nHuman: Hi?", "rejected": "\n\nHuman: Hi?\n\nAssistant: Hm."},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_build({"name": "hh", "source": {"path": str(src), "kind": "hh"}, "output": {"dir": str(tmp_path / "o")}})
    ds = result.dataset
    assert ds["prompt_id"] == ["h0"] and ds["chosen"][0] == [{"role": "assistant", "content": "Hello!"}]
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert [(r["reason"], r["field"], r["row"]) for r in rejects] == [("no_assistant_turn", "chosen", 1)]
    assert result.stats["source"]["drops"] == {"no_assistant_turn": 1}


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[source]\npath = "p.jsonl"\ncolumns = {promt = "q"}\n[[stages]]\ntype = "on_policy"\nn = 1\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    message = str(info.value)
    assert "bad.toml: source.columns.promt: Extra inputs are not permitted" in message
    # with several stage types pydantic names the union member too: stages.0.on_policy.n
    assert re.search(r"bad.toml: stages\.0\.(on_policy\.)?n: Input should be greater than or equal to 2", message)
    with pytest.raises(RecipeError, match="unknown.toml: recipe file not found"):
        load_recipe(tmp_path / "unknown.toml")


def test_stage_chain_is_checked_before_running(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    recipe = {"source": {"path": str(src), "kind": "pairs"}, "stages": [{"type": "on_policy"}],
              "output": {"dir": str(tmp_path / "o")}}
    with pytest.raises(RecipeError, match=r"stage 0 \(on_policy\) reads \['reference'\]"):
        run_build(recipe)


def test_output_dir_that_is_a_file_is_an_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(InputError, match="not a directory"):
        run_build({"source": {"path": str(FIXTURES / "prompts_small.jsonl")}, "output": {"dir": str(target)}})
    assert target.read_text() == "keep me"


def test_examples_are_valid_recipes():
    for path in sorted((REPO / "examples").glob("*.toml")):
        recipe = load_recipe(path)
        assert recipe.stages, path
