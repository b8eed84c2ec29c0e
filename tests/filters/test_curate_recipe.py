"""examples/curate_hh.toml end to end on real HH-RLHF pairs: every filter's columns, the flip-rate
estimate, bucket counts and drop reasons, and flips that keep each pair's own texts (by id)."""

from __future__ import annotations

import json
import tomllib

import pyarrow.parquet as pq
import pytest

from prefdata.builder import run_build
from prefdata.schemas.readers import read_pairs
from prefdata.types import SourceKind
from tests.conftest import REPO

ROWS = 12


@pytest.mark.realdata
def test_curate_hh_recipe_writes_every_column_and_estimate(vllm_engine, hf_engine, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    recipe = tomllib.loads((REPO / "examples" / "curate_hh.toml").read_text())
    embedding_rm = next(s for s in recipe["stages"] if s["type"] == "embedding_rm")
    embedding_rm["train_limit"] = 300  # the recipe trains on all 1312 pairs; a test needs fewer
    result = run_build(recipe, output=tmp_path / "out", limit=ROWS, engines={"judge": vllm_engine, "policy": hf_engine})

    stats = json.loads((result.out_dir / "stats.json").read_text())
    flip_rate = stats["estimates"]["flip_rate"]
    assert 0.0 <= flip_rate["interval"][0] <= flip_rate["epsilon"] <= flip_rate["interval"][1] <= 0.5
    assert {"sign", "mixture"} <= set(flip_rate["estimators"])
    assert stats["estimates"]["embedding_rm"]["fit_pairs"] == 300
    by_name = {stage["name"]: stage for stage in stats["stages"]}
    assert "0:pairwise_judge.position_consistency" in by_name["score"]["rates"]
    voting = by_name["voting"]
    buckets = {b: voting["counters"].get(f"bucket_{b}", 0) for b in ("incorrect", "ambiguous", "normal")}
    assert sum(buckets.values()) == voting["rows_in"] and buckets["incorrect"] == int(0.2 * voting["rows_in"])
    assert voting["drops"].get("ambiguous_preference", 0) == buckets["ambiguous"]
    for stage in stats["stages"]:
        assert stage["rows_in"] == stage["rows_out"] + sum(stage["drops"].values()), stage["name"]

    rows = result.dataset.to_list()
    assert rows and len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert len(row["member_margins"]) == 6  # the judge and five embedding-RM members
        for column in ("ches", "ln_ches", "strength_mean", "strength_std", "flip_prob"):
            assert row[column] is not None, column
        assert row["bucket"] in ("incorrect", "normal")  # ambiguous pairs were dropped
        assert row["flipped"] == (row["bucket"] == "incorrect")
    source = {r["id"]: r for r in read_pairs(shared_data / "hh_rlhf_harmless_test_1312.jsonl",
                                             kind=SourceKind.HH, limit=ROWS).table.to_pylist()}
    for row in rows:
        original = source[row["id"]]
        expected = (original["rejected"], original["chosen"]) if row["flipped"] else (original["chosen"], original["rejected"])
        assert (row["chosen"], row["rejected"]) == expected and row["prompt"] == original["prompt"]


INVARIANT_ROWS = 16


@pytest.mark.realdata
def test_curate_hh_gives_the_same_pairs_for_1_4_and_16_shards(hf_engine, shared_data, tmp_path, monkeypatch):
    """examples/curate_hh.toml on 16 real pairs with shard_size 16, 4 and 1: the same ids, texts,
    flips, buckets and drops (by id and reason); scores equal within 1e-4 (engine batches differ
    with the shards: README "Whole-input stages"). The judge runs on the transformers engine (the
    same SmolLM2 as the recipe's vLLM judge; one engine for both roles keeps the test's cost down)."""
    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    recipe = tomllib.loads((REPO / "examples" / "curate_hh.toml").read_text())
    next(s for s in recipe["stages"] if s["type"] == "embedding_rm")["train_limit"] = 64
    runs = {}
    for shard_size in (INVARIANT_ROWS, INVARIANT_ROWS // 4, INVARIANT_ROWS // 16):
        recipe["output"]["shard_size"] = shard_size
        result = run_build(recipe, output=tmp_path / f"out-{shard_size}", limit=INVARIANT_ROWS,
                           engines={"judge": hf_engine, "policy": hf_engine})
        rejects = pq.read_table(result.out_dir / "rejects.parquet").to_pylist()
        runs[shard_size] = (sorted(result.dataset.to_list(), key=lambda r: r["id"]),
                            sorted((r["stage"], r["row_id"], r["reason"]) for r in rejects))
        assert result.stats["output"]["shards"] == -(-INVARIANT_ROWS // shard_size)
    (rows, rejects), *others = runs.values()
    exact = ("id", "prompt", "chosen", "rejected", "bucket", "flipped")
    close = ("ches", "ln_ches", "strength_mean", "strength_std", "flip_prob", "margin")
    for other_rows, other_rejects in others:
        assert other_rejects == rejects
        assert [tuple(r[c] for c in exact) for r in other_rows] == [tuple(r[c] for c in exact) for r in rows]
        for mine, theirs in zip(other_rows, rows):
            for column in close:
                assert mine[column] == pytest.approx(theirs[column], rel=1e-4, abs=1e-4), column
            assert mine["member_margins"] == pytest.approx(theirs["member_margins"], rel=1e-4, abs=1e-4)
