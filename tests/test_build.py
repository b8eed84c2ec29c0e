"""The build API: recipe -> stages -> Parquet shards, rejects, stats; errors that name the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prefdata
from prefdata.builder import resolve_recipe, run_build
from prefdata.recipe import RecipeError, load_recipe
from prefdata.schemas.errors import InputError
from prefdata.schemas.output_folder import OutputFolderError
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
    from prefdata.generators.on_policy import CITATION

    methods = {(m["kind"], m["name"]): m for m in stats["methods"]}  # recorded for the dataset card
    assert methods[("stage", "on_policy")]["bibtex"] == CITATION and methods[("stage", "on_policy")]["summary"]
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


# --- a build a user can trust: their files, empty inputs, overrides ------------------------------


def _pairs_recipe(src, out, **extra):
    return {"name": "pairs", "source": {"path": str(src), "kind": "pairs"}, "output": {"dir": str(out)}, **extra}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_build_never_touches_a_users_folder(tmp_path):
    """The Hub's shard name and the user's stats.json survive; the build refuses before reading."""
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["mine"], "chosen": ["a"], "rejected": ["b"]}),
                   folder / "data" / "train-00000-of-00001.parquet")
    (folder / "stats.json").write_text('{"mine": 1}')
    before = _files(folder)
    for overwrite in (False, True):
        with pytest.raises(InputError, match="prefdata did not write"):
            run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", folder), overwrite=overwrite)
    assert _files(folder) == before


def test_the_input_file_is_never_the_output(tmp_path):
    """`--input DIR/data/train-00000-of-00001.parquet --output DIR`: refused, the input intact."""
    first = run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", tmp_path / "first"))
    src = first.out_dir / "data" / "train-00000.parquet"
    before = src.read_bytes()
    with pytest.raises(InputError, match="lies in"):
        run_build(_pairs_recipe(src, first.out_dir))
    assert src.read_bytes() == before


def test_rebuild_and_overwrite_an_earlier_build(tmp_path):
    out = tmp_path / "out"
    first = run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", out, output={"dir": str(out), "shard_size": 2}))
    assert len(list((out / "data").glob("*.parquet"))) == first.stats["output"]["shards"] > 1
    (out / "NOTES.md").write_text("mine")  # a file the user adds next to a build stays
    again = run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", out, output={"dir": str(out), "shard_size": 100}))
    assert [p.name for p in (out / "data").glob("*.parquet")] == ["train-00000.parquet"]
    assert again.stats["output"]["rows"] == first.stats["output"]["rows"]
    run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", out), overwrite=True)
    assert (out / "NOTES.md").read_text() == "mine"
    manifest = json.loads((out / ".prefdata" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"data/train-00000.parquet", "rejects.parquet", "stats.json", "recipe.json"}


@pytest.mark.parametrize("content, message", [
    (b"", "no rows to build from (0 rows read"),
    (b"\n   \n\n", "no rows to build from (0 rows read"),
    (b'{"prompt": 1}\nnot json\n{"prompt": ""}\n', "all 3 rows were rejected (wrong_type 1, invalid_json 1, empty_text 1); "
                                                    "first: row 0, field 'prompt': wrong_type"),
])
def test_no_usable_rows_fails_before_any_engine_loads(tmp_path, content, message):
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(content)
    # An engine that cannot load: reaching it would raise a different error.
    recipe = {"source": {"path": str(src)}, "engines": {"policy": {"backend": "transformers", "model": str(tmp_path / "no-model")}},
              "stages": [{"type": "on_policy", "n": 2}], "output": {"dir": str(tmp_path / "out")}}
    with pytest.raises(InputError, match=re.escape(message)):
        run_build(recipe)
    assert not (tmp_path / "out").exists()


def _unloadable_engine_recipe(src, out):
    """Prompts for on_policy on an engine that cannot load: a build that got as far as loading
    engines would fail with the engine's error instead of the one the test expects."""
    return {"source": {"path": str(src)}, "engines": {"policy": {"backend": "transformers", "model": str(out.parent / "no-model")}},
            "stages": [{"type": "on_policy", "n": 2}], "output": {"dir": str(out)}}


@pytest.mark.parametrize("place", ["read_only_folder", "sysfs"])
def test_an_unwritable_output_folder_stops_the_build_before_an_engine_loads(tmp_path, monkeypatch, place):
    if place == "sysfs":  # no one, root included, may create a folder in sysfs
        out = Path("/sys/prefdata-out")
    else:  # a read-only folder; root ignores permission bits, so os.access answers as for a user
        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o555)
        if os.geteuid() == 0:
            real_access = os.access

            def access(path, mode, *args, **kwargs):
                if mode & os.W_OK and Path(path).absolute() == out:
                    return False
                return real_access(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
    with pytest.raises(OutputFolderError, match="not writable|cannot create it"):
        run_build(_unloadable_engine_recipe(FIXTURES / "prompts_small.jsonl", out))
    assert not out.exists() or list(out.iterdir()) == []


def test_a_second_build_into_a_folder_being_built_is_refused(tmp_path):
    """Another process holds the folder (as a running build does, after claiming it): run_build is
    refused before an engine loads, and the folder is left as it was."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from prefdata.schemas.output_folder import OutputFolder; "
                               "folder = OutputFolder.claim(sys.argv[1]); print('claimed', flush=True); sys.stdin.read()",
         str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        before = _files(out)
        with pytest.raises(OutputFolderError, match="another prefdata build is writing into this folder"):
            run_build(_unloadable_engine_recipe(FIXTURES / "prompts_small.jsonl", out))
        assert _files(out) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder gone, the folder is free again
    run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", out))
    assert (out / "stats.json").is_file()


def test_bom_and_compressed_jsonl_read_like_plain(tmp_path):
    plain = (FIXTURES / "pairs_small.jsonl").read_bytes()
    variants = {"bom.jsonl": b"\xef\xbb\xbf" + plain}
    for suffix, codec in ((".jsonl.gz", "gzip"), (".json.gz", "gzip"), (".jsonl.zst", "zstd"),
                          (".jsonl.lz4", "lz4")):  # pyarrow's lz4 is the LZ4 frame format the `lz4` tool writes
        path = tmp_path / f"c{suffix}"
        with pa.output_stream(str(path), compression=codec) as stream:
            stream.write(plain)
        variants[path.name] = None
    import bz2

    (tmp_path / "c.jsonl.bz2").write_bytes(bz2.compress(plain))  # written by the standard library, not pyarrow
    variants["c.jsonl.bz2"] = None
    assert {name.rsplit(".", 1)[-1] for name in variants} == {"jsonl", "gz", "zst", "bz2", "lz4"}
    (tmp_path / "bom.jsonl").write_bytes(variants["bom.jsonl"])
    expected = run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", tmp_path / "o-plain"))
    for name in variants:
        got = run_build(_pairs_recipe(tmp_path / name, tmp_path / f"o-{name}"))
        assert got.stats["source"]["drops"] == expected.stats["source"]["drops"], name  # the BOM line is no reject
        rows = [{**r, "metadata": {**r["metadata"], "source_file": None}} for r in got.dataset.to_list()]
        assert rows == [{**r, "metadata": {**r["metadata"], "source_file": None}} for r in expected.dataset.to_list()], name


def test_set_overrides_are_validated_and_recorded(tmp_path):
    recipe = _recipe(tmp_path)

    got = resolve_recipe(recipe, overrides=["seed=7", "output.shard_size=50", "stages.0.n=8",
                                            "stages.0.sampling.temperature=0.5", "engines.policy.dtype=bfloat16"])
    assert got.seed == 7 and got.output.shard_size == 50 and got.stages[0].n == 8
    assert got.stages[0].sampling.temperature == 0.5 and got.engines["policy"].dtype == "bfloat16"
    assert got.overrides == ["seed=7", "output.shard_size=50", "stages.0.n=8", "stages.0.sampling.temperature=0.5",
                             "engines.policy.dtype=bfloat16"]
    with pytest.raises(RecipeError, match=r"stages\.0\.(on_policy\.)?n: Input should be greater than or equal to 2"):
        resolve_recipe(recipe, overrides=["stages.0.n=1"])
    with pytest.raises(RecipeError, match="output.shard_sise: Extra inputs are not permitted"):
        resolve_recipe(recipe, overrides=["output.shard_sise=5"])
    with pytest.raises(RecipeError, match="stages.3 is not an index of a list of 1 items"):
        resolve_recipe(recipe, overrides=["stages.3.n=2"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        resolve_recipe(recipe, overrides=["seed"])


def test_limit_replaces_the_recipes_limit_and_caps_each_mixed_source():
    """`--limit 1312` on examples/curate_hh.toml (limit = 128) reads 1312 pairs, as its comment says."""
    recipe = load_recipe(REPO / "examples" / "curate_hh.toml")
    assert recipe.source.limit == 128
    assert resolve_recipe(recipe, limit=1312).source.limit == 1312
    assert resolve_recipe(recipe, limit=16).source.limit == 16
    mixed = {"name": "mix", "sources": [{"path": "a.jsonl", "kind": "pairs", "limit": 10},
                                         {"path": "b.jsonl", "kind": "pairs"}]}
    assert [src.limit for src in resolve_recipe(mixed, limit=5).sources] == [5, 5]
    assert [src.limit for src in resolve_recipe(mixed, limit=50).sources] == [10, 50]


def test_set_is_recorded_in_recipe_json(tmp_path):
    out = tmp_path / "out"
    run_build(_pairs_recipe(FIXTURES / "pairs_small.jsonl", out), overrides=["seed=3", "description=from --set"])
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["seed"] == 3 and recorded["description"] == "from --set"
    assert recorded["overrides"] == ["seed=3", "description=from --set"]
    assert load_recipe(out / "recipe.json").seed == 3  # recipe.json is itself a valid recipe
