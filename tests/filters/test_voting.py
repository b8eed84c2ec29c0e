"""Voting strength on a fixture with known member margins: exact means, population stds, buckets, actions."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from prefdata.filters.voting import VotingConfig, VotingDecision, VotingFilter, decide, score_table
from prefdata.pipeline.context import BuildContext, EnginePool

A = [{"role": "assistant", "content": "good"}]
B = [{"role": "assistant", "content": "bad"}]
# ten pairs, three members each; strength means are -4, -3, ..., 5 (row i has mean i - 4)
MARGINS = [[m - 1.0, m, m + 1.0] if i % 2 else [m - 2.0, m, m + 2.0] for i, m in enumerate(range(-4, 6))]


def fixture(margins=MARGINS) -> pa.Table:
    n = len(margins)
    return pa.table({
        "id": [f"p{i}" for i in range(n)],
        "chosen": [A] * n, "rejected": [B] * n,
        "chosen_score": [float(i) for i in range(n)], "rejected_score": [0.0] * n,
        "margin": [float(i) for i in range(n)],
        "chosen_scores": [[1.0, 2.0, 3.0]] * n, "rejected_scores": [[0.5, 0.5, None]] * n,
        "member_margins": margins,
    })


def test_strength_mean_std_and_quantile_buckets_are_exact():
    table, cuts = score_table(fixture(), VotingConfig())
    rows = table.to_pylist()
    assert [r["strength_mean"] for r in rows] == [float(m) for m in range(-4, 6)]
    # population std of [m-2, m, m+2] is sqrt(8/3); of [m-1, m, m+1] sqrt(2/3)
    for i, r in enumerate(rows):
        assert r["strength_std"] == pytest.approx(math.sqrt(2 / 3) if i % 2 else math.sqrt(8 / 3), abs=1e-12)
    assert [r["bucket"] for r in rows] == ["incorrect"] * 2 + ["ambiguous"] * 2 + ["normal"] * 6
    assert cuts["incorrect_max"] == -3.0 and cuts["ambiguous_max"] == -1.0 and cuts["rows"] == 10


def test_quantiles_are_by_rank_with_ties_broken_by_id():
    table, _ = score_table(fixture([[0.0]] * 5), VotingConfig(incorrect_quantile=0.4, ambiguous_quantile=0.6))
    assert table.column("bucket").to_pylist() == ["incorrect", "incorrect", "ambiguous", "normal", "normal"]


def test_threshold_mode_and_null_members():
    margins = [[-2.0, None], [0.5, float("nan")], [None], [], [3.0, 1.0]]
    table, cuts = score_table(fixture(margins), VotingConfig(mode="threshold", incorrect_below=-1.0, ambiguous_below=1.0))
    rows = table.to_pylist()
    assert [r["strength_mean"] for r in rows] == [-2.0, 0.5, None, None, 2.0]
    assert [r["strength_std"] for r in rows] == [0.0, 0.0, None, None, 1.0]
    assert [r["bucket"] for r in rows] == ["incorrect", "ambiguous", None, None, "normal"]
    assert cuts["mode"] == "threshold"


def test_decide_flips_incorrect_drops_ambiguous_writes_margin():
    config = VotingConfig()
    scored, _ = score_table(fixture(), config)
    out, rejects, counters = decide(scored, config)
    rows = {r["id"]: r for r in out.to_pylist()}
    assert sorted(r.row_id for r in rejects) == ["p2", "p3"]
    assert {r.reason.value for r in rejects} == {"ambiguous_preference"}
    assert set(rows) == {f"p{i}" for i in range(10)} - {"p2", "p3"}
    flipped = rows["p0"]
    assert flipped["flipped"] and flipped["chosen"] == B and flipped["rejected"] == A
    assert flipped["chosen_score"] == 0.0 and flipped["rejected_score"] == 0.0  # swapped (0 and 0)
    assert rows["p1"]["chosen_score"] == 0.0 and rows["p1"]["rejected_score"] == 1.0
    assert flipped["chosen_scores"] == [0.5, 0.5, None] and flipped["rejected_scores"] == [1.0, 2.0, 3.0]
    assert flipped["member_margins"] == [6.0, 4.0, 2.0] and flipped["strength_mean"] == 4.0
    assert flipped["margin"] == 4.0  # adaptive margin = strength mean of the pair as stored
    assert not rows["p9"]["flipped"] and rows["p9"]["margin"] == 5.0 and rows["p9"]["chosen"] == A
    assert counters["bucket_incorrect"] == 2 and counters["voting_flip_incorrect"] == 2
    assert counters["voting_drop_ambiguous"] == 2 and counters["voting_keep_normal"] == 6


def test_keep_everywhere_is_score_only():
    config = VotingConfig(decide=VotingDecision(incorrect="keep", ambiguous="keep", write_margin=False))
    scored, _ = score_table(fixture(), config)
    out, rejects, _ = decide(scored, config)
    assert out.num_rows == 10 and not rejects and not any(out.column("flipped").to_pylist())
    assert out.column("margin").to_pylist() == [float(i) for i in range(10)]


def test_stage_reports_cut_points_as_estimates():
    out = VotingFilter(VotingConfig()).process(fixture(), BuildContext(engines=EnginePool({})))
    assert out.estimates["voting"]["incorrect_max"] == -3.0
    assert out.counters["voting_tables"] == 1 and out.table.num_rows == 8


def test_config_rejects_unordered_quantiles():
    with pytest.raises(ValueError, match="cumulative"):
        VotingConfig(incorrect_quantile=0.5, ambiguous_quantile=0.3)
