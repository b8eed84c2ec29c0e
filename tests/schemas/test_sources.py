"""Sources read chunk by chunk, and `[[sources]]` mixes: shares, limits, stable unique ids,
the source_name column, dedup across sources."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefdata.builder import run_build
from prefdata.recipe import RecipeError, parse_recipe
from prefdata.schemas.sources import ChunkReader, mix_counts, read_mix, read_one

from .preset_fixtures import write_fixture


def pairs_file(path, n, prefix, start=0):
    rows = [{"id": f"{i}", "prompt": f"{prefix} question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def specs(recipe: dict):
    parsed = parse_recipe(recipe)
    return [s.spec() for s in parsed.source_list()], parsed.seed


def test_mix_counts_follow_weights_limited_by_the_scarcest_source():
    assert mix_counts([100, 300], [1, 1]) == [100, 100]
    assert mix_counts([100, 300], [1, 3]) == [100, 300]
    assert mix_counts([100, 300], [3, 1]) == [100, 33]
    assert mix_counts([50, 50, 1000], [0.2, 0.3, 0.5]) == [33, 50, 83]


def test_weighted_mix_shares_source_name_and_stable_unique_ids(tmp_path):
    a, b = pairs_file(tmp_path / "a.jsonl", 100, "A"), pairs_file(tmp_path / "b.jsonl", 300, "B")
    recipe = {"seed": 3, "sources": [{"path": str(a), "kind": "pairs", "weight": 3},
                                     {"path": str(b), "kind": "pairs", "name": "bee", "weight": 1}]}
    result = read_mix(*specs(recipe))
    names = Counter(result.table.column("source_name").to_pylist())
    assert names == {"a": 100, "bee": 33}
    ids = result.table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)  # both files use ids 0..99: namespaced, no collision
    prompt_ids = result.table.column("prompt_id").to_pylist()
    assert {p.split("/")[0] for p in prompt_ids} == {"a", "bee"} and "a/7" in prompt_ids
    assert [s["selected"] for s in result.sources] == [100, 33] and [s["rows_ok"] for s in result.sources] == [100, 300]
    # the same recipe again: the same rows with the same ids; another seed: another sample of b
    again = read_mix(*specs(recipe))
    assert again.table.column("id").to_pylist() == ids
    other = read_mix(*specs({**recipe, "seed": 4}))
    bee = lambda t: {p for p, n in zip(t.column("prompt_id").to_pylist(), t.column("source_name").to_pylist()) if n == "bee"}  # noqa: E731
    assert bee(other.table) != bee(result.table) and len(bee(other.table)) == 33
    # a row's id does not depend on the other sources of the mix
    alone = read_mix(*specs({"sources": [{"path": str(b), "kind": "pairs", "name": "bee"}]}))
    alone_ids = dict(zip(alone.table.column("prompt_id").to_pylist(), alone.table.column("id").to_pylist()))
    mixed_ids = dict(zip(prompt_ids, ids))
    assert all(alone_ids[p] == mixed_ids[p] for p in bee(result.table))


def test_unweighted_mix_takes_everything_up_to_each_limit_and_mixes_kinds(tmp_path):
    a = pairs_file(tmp_path / "a.jsonl", 10, "A")
    nectar = write_fixture("nectar", tmp_path)
    result = read_mix(*specs({"sources": [{"path": str(a), "kind": "pairs", "limit": 4},
                                          {"path": str(nectar), "preset": "nectar"}]}))
    assert Counter(result.table.column("source_name").to_pylist()) == {"a": 4, "nectar": 2}
    meta = result.table.column("metadata").to_pylist()
    assert meta[0]["n_completions"] is None and meta[-1]["n_completions"] == 2  # pairs and completions in one table


def test_mix_recipe_errors():
    with pytest.raises(RecipeError, match="exactly one of \\[source\\] and \\[\\[sources\\]\\]"):
        parse_recipe({"source": {"path": "a.jsonl"}, "sources": [{"path": "b.jsonl"}]})
    with pytest.raises(RecipeError, match="names must be unique"):
        parse_recipe({"sources": [{"path": "x/a.jsonl"}, {"path": "y/a.jsonl"}]})
    with pytest.raises(RecipeError, match="`weight` on every source or on none"):
        parse_recipe({"sources": [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}]})


def test_build_with_sources_dedups_across_sources_and_reports_each(tmp_path):
    a = pairs_file(tmp_path / "a.jsonl", 6, "Same")
    b = pairs_file(tmp_path / "b.jsonl", 6, "Same", start=3)  # prompts 3..5 are also in a
    out = tmp_path / "out"
    result = run_build({"name": "mix", "sources": [{"path": str(a), "kind": "pairs"}, {"path": str(b), "kind": "pairs"}],
                        "stages": [{"type": "dedup", "near_threshold": None}], "output": {"dir": str(out), "shard_size": 64}},
                       limit=5)  # --limit caps each source
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("*.parquet"))])
    kept = sorted(zip(table.column("source_name").to_pylist(), table.column("prompt_id").to_pylist()))
    # a: 0..4; b (limit 5): 3..7, of which 3 and 4 duplicate a's prompts (first occurrence kept)
    assert kept == [("a", f"a/{i}") for i in range(5)] + [("b", f"b/{i}") for i in (5, 6, 7)]
    stats = result.stats
    assert [(s["name"], s["rows_ok"], s["selected"]) for s in stats["source"]["sources"]] == [("a", 5, 5), ("b", 5, 5)]
    assert stats["stages"][0]["drops"] == {"exact_duplicate": 2}


def test_chunk_reader_holds_at_most_chunk_rows_and_limit_stops_reading(tmp_path):
    path = pairs_file(tmp_path / "many.jsonl", 1000, "Q")
    spec = parse_recipe({"source": {"path": str(path), "kind": "pairs"}}).source.spec()
    reader = ChunkReader(spec, chunk_rows=64)
    sizes, read_so_far = [], []
    for chunk in reader:
        sizes.append(chunk.num_rows)
        read_so_far.append(reader.rows_read)
    assert max(sizes) == 64 and sum(sizes) == 1000 and len(sizes) == 16
    # rows are validated as chunks are consumed, not all before the first one
    assert read_so_far[0] == 64 and read_so_far == sorted(read_so_far)
    limited = parse_recipe({"source": {"path": str(path), "kind": "pairs", "limit": 10}}).source.spec()
    result = read_one(limited)
    assert result.table.num_rows == 10 and result.rows_read == 10


def read_out(out):
    return [p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))]


def test_streamed_build_processes_shard_by_shard_with_the_same_output(tmp_path, monkeypatch):
    import prefdata.builder as build_module
    from prefdata.schemas.sources import StreamedSource

    path = pairs_file(tmp_path / "big.jsonl", 1000, "Q")
    with path.open("a") as handle:
        handle.write('{"id": "bad", "prompt": "p", "chosen": "same", "rejected": "same"}\n')
    opened: list[StreamedSource] = []
    real_open = build_module.open_source

    def spy(recipe):
        result = real_open(recipe)
        opened.append(result)
        return result

    monkeypatch.setattr(build_module, "open_source", spy)
    in_memory: list[tuple[int, int | None, int]] = []

    def on_shard(done, total):  # rows validated so far, as each shard is written
        in_memory.append((done, total, opened[0].reader.rows_read))

    recipe = {"name": "s", "source": {"path": str(path), "kind": "pairs", "streaming": True},
              "output": {"dir": str(tmp_path / "streamed"), "shard_size": 100}}
    streamed = run_build(recipe, on_shard=on_shard)
    assert isinstance(opened[0], StreamedSource)
    assert len(in_memory) == 10 and all(total is None for _, total, _ in in_memory)
    # at most the shard being run and the two read ahead have been read when a shard is written
    assert all(rows <= (done + 2) * 100 for done, _, rows in in_memory), in_memory
    assert in_memory[0][2] < 1000
    assert streamed.stats["source"]["rows_ok"] == 1000 and streamed.stats["source"]["streamed"] is True
    assert streamed.stats["source"]["drops"] == {"chosen_equals_rejected": 1}

    whole = run_build({**recipe, "source": {**recipe["source"], "streaming": False},
                       "output": {"dir": str(tmp_path / "whole"), "shard_size": 100}})
    assert read_out(tmp_path / "streamed") == read_out(tmp_path / "whole")  # same shards, byte for byte
    assert whole.stats["source"]["rows_ok"] == 1000 and "streamed" not in whole.stats["source"]
    assert pq.read_table(tmp_path / "streamed" / "rejects.parquet").num_rows == 1


def test_streamed_input_meets_a_whole_input_stage_at_its_barrier(tmp_path):
    """A whole-input stage (dedup) sees every streamed shard at its barrier: the same output as a whole read."""
    path = pairs_file(tmp_path / "big.jsonl", 300, "Q")
    outs = {}
    for streaming in (True, False):
        out = tmp_path / f"out-{streaming}"
        run_build({"name": "s", "source": {"path": str(path), "kind": "pairs", "streaming": streaming},
                   "stages": [{"type": "dedup", "near_threshold": None}],
                   "output": {"dir": str(out), "shard_size": 100}})
        outs[streaming] = read_out(out)
    assert outs[True] == outs[False] and len(outs[True]) == 3


def test_a_local_input_over_the_size_threshold_is_streamed_without_asking(tmp_path, monkeypatch):
    """README: "a local input over 1 GiB is read shard by shard". The threshold (LOCAL_STREAM_ABOVE_BYTES,
    read by the builder and by `open_streamed`) is lowered to a few KB instead of writing a 1 GiB file."""
    import prefdata.builder as build_module
    import prefdata.schemas.sources as sources_module
    from prefdata.schemas.sources import StreamedSource

    path = pairs_file(tmp_path / "big.jsonl", 300, "Q")
    size = path.stat().st_size
    assert size > 8 * 1024
    opened: list = []
    real_open = build_module.open_source

    def spy(recipe):
        opened.append(real_open(recipe))
        return opened[-1]

    monkeypatch.setattr(build_module, "open_source", spy)
    recipe = {"name": "s", "source": {"path": str(path), "kind": "pairs"},  # no `streaming` key
              "output": {"dir": str(tmp_path / "small-threshold"), "shard_size": 100}}
    for module in (build_module, sources_module):
        monkeypatch.setattr(module, "LOCAL_STREAM_ABOVE_BYTES", 4096)
    streamed = run_build(recipe)
    assert isinstance(opened[-1], StreamedSource)
    assert streamed.stats["source"]["streamed"] is True and streamed.stats["source"]["rows_ok"] == 300

    for module in (build_module, sources_module):  # the same file, just under the threshold: read whole
        monkeypatch.setattr(module, "LOCAL_STREAM_ABOVE_BYTES", size)
    whole = run_build({**recipe, "output": {"dir": str(tmp_path / "at-threshold"), "shard_size": 100}})
    assert not isinstance(opened[-1], StreamedSource) and "streamed" not in whole.stats["source"]
    assert read_out(tmp_path / "small-threshold") == read_out(tmp_path / "at-threshold")


def _shuffled_copy(src, dst, seed):
    import random

    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(seed).shuffle(lines)
    dst.write_text("".join(lines), encoding="utf-8")
    assert dst.read_text(encoding="utf-8") != src.read_text(encoding="utf-8")
    return dst


def test_weighted_sample_does_not_depend_on_row_order(tmp_path):
    """README: "each source's rows are the ones with the smallest hash of (seed, source name, row id), a
    seeded sample independent of row order": the same file shuffled gives the same sampled ids."""
    a = pairs_file(tmp_path / "a.jsonl", 50, "A")
    b = pairs_file(tmp_path / "b.jsonl", 400, "B")
    selected = []
    for name, seed in (("b.jsonl", None), ("b-shuffled-1.jsonl", 1), ("b-shuffled-2.jsonl", 2)):
        folder = tmp_path / f"copy-{name}"
        folder.mkdir()
        src = b if seed is None else _shuffled_copy(b, folder / "b.jsonl", seed)  # same stem: same source name
        recipe = {"seed": 5, "sources": [{"path": str(a), "kind": "pairs", "weight": 1},
                                         {"path": str(src), "kind": "pairs", "weight": 1}]}
        table = read_mix(*specs(recipe)).table
        names = table.column("source_name").to_pylist()
        selected.append({(p, i) for p, i, n in zip(table.column("prompt_id").to_pylist(), table.column("id").to_pylist(),
                                                   names) if n == "b"})
    assert len(selected[0]) == 50
    assert {p for p, _ in selected[0]} != {f"b/{i}" for i in range(50)}  # a sample, not the file's first rows
    assert selected[1] == selected[0] and selected[2] == selected[0]


def test_a_source_limit_caps_the_rows_read_before_the_seeded_sample(tmp_path):
    """A per-source `limit` stops reading after that many usable rows; the seeded sample is drawn among
    those rows, so (unlike the sample itself) it depends on which rows come first in the file."""
    a = pairs_file(tmp_path / "a.jsonl", 10, "A")
    b = pairs_file(tmp_path / "b.jsonl", 100, "B")
    recipe = {"seed": 5, "sources": [{"path": str(a), "kind": "pairs", "weight": 1},
                                     {"path": str(b), "kind": "pairs", "weight": 1, "limit": 40}]}
    table = read_mix(*specs(recipe)).table
    sampled = {p for p, n in zip(table.column("prompt_id").to_pylist(), table.column("source_name").to_pylist()) if n == "b"}
    assert len(sampled) == 10 and sampled <= {f"b/{i}" for i in range(40)}  # among the first 40 usable rows
