"""examples/curate_hh.toml end to end on real HH-RLHF pairs: every filter's columns, the flip-rate
estimate, bucket counts and drop reasons, and flips that keep each pair's own texts (by id)."""

from __future__ import annotations

import json
import tomllib

import pytest

from prefdata.build import run_build
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
