"""The `score` stage: member columns kept in order, stages compose by appending, aggregates by hand,
null scores never become pairs; and end to end with real judges through `run_build`."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from prefdata.builder import run_build
from prefdata.card import method_citations
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.recipe import parse_recipe
from prefdata.registry import STAGES, make_stage
from prefdata.schemas.readers import read_pairs
from prefdata.scorers import VerifierConfig
from prefdata.scorers.base import PairScorer, PairScoreResult, PointwisePairs
from prefdata.scorers.ensemble import ScoreConfig, ScoreStage
from prefdata.scorers.reward_transform import logsig, pair_margin
from prefdata.types import SourceKind

from ..conftest import REPO


class Scripted(PairScorer):
    """Orchestration-only member: fixed per-side scores (pointwise) or fixed margins (pairwise)."""

    def __init__(self, name, chosen=None, rejected=None, margins=None, errors=None):
        self.name, self._chosen, self._rejected, self._margins, self._errors = name, chosen, rejected, margins, errors

    def score_pairs(self, batch):
        n = len(batch)
        errors = self._errors or [None] * n
        if self._margins is not None:  # pairwise: only d
            return PairScoreResult(list(self._margins), errors, [None] * n, [None] * n,
                                   counters=Counter(position_consistency__num=1, position_consistency__den=n))
        margins = [None if c is None or r is None else c - r for c, r in zip(self._chosen, self._rejected)]
        return PairScoreResult(margins, errors, list(self._chosen), list(self._rejected))


def _pairs(fixtures_dir, n=4):
    return read_pairs(fixtures_dir / "pairs_small.jsonl", kind=SourceKind.PAIRS, limit=n).table


def _stage(members, **config):
    stage = ScoreStage(ScoreConfig(members=[VerifierConfig()] * len(members), **config))
    stage.members = list(members)  # scripted members in place of the configured ones
    stage.ensemble.members = stage.members
    return stage


def _run(stage, table):
    ctx = BuildContext(engines=EnginePool({}))
    return stage.run(table, ctx)


def test_score_is_a_registered_stage():
    assert STAGES["score"] == (ScoreConfig, ScoreStage)


def test_ensemble_keeps_member_columns_in_order(fixtures_dir):
    table = _pairs(fixtures_dir)
    pointwise = Scripted("rm", chosen=[5.0, 2.0, 7.0, 1.0], rejected=[1.0, 3.0, 6.0, 1.0])
    pairwise = Scripted("pw", margins=[0.5, -1.0, 2.0, 0.0])
    out, stats = _run(_stage([pointwise, pairwise]), table)
    rows = out.table.to_pylist()
    assert [r["id"] for r in rows] == table.column("id").to_pylist()  # kept, in order, not flipped
    assert [r["chosen_scores"] for r in rows] == [[5.0, None], [2.0, None], [7.0, None], [1.0, None]]
    assert [r["rejected_scores"] for r in rows] == [[1.0, None], [3.0, None], [6.0, None], [1.0, None]]
    assert [r["member_margins"] for r in rows] == [[4.0, 0.5], [-1.0, -1.0], [1.0, 2.0], [0.0, 0.0]]
    assert [[d["name"] for d in r["member_details"]] for r in rows] == [["rm", "pw"]] * 4
    assert [r["margin"] for r in rows] == pytest.approx([2.25, -1.0, 1.5, 0.0])  # mean of member margins
    assert [r["chosen_score"] for r in rows] == [5.0, 2.0, 7.0, 1.0]  # per-side: members that have sides
    assert [r["rejected_score"] for r in rows] == [1.0, 3.0, 6.0, 1.0]
    assert [r["chosen"] for r in rows] == table.column("chosen").to_pylist()
    assert stats.counters["0:rm.scored"] == 4 and stats.counters["1:pw.scored"] == 4
    assert stats.counters["margin_negative"] == 1 and stats.counters["margin_tie"] == 1
    assert stats.as_dict()["rates"] == {"1:pw.position_consistency": 0.25}


def test_null_scores_never_become_pairs(fixtures_dir):
    table = _pairs(fixtures_dir)
    flaky = Scripted("judge", chosen=[5.0, None, 7.0, 2.0], rejected=[1.0, 3.0, 6.0, None],
                     errors=[None, "truncated", None, "no_score_tokens"])
    steady = Scripted("rm", chosen=[1.0, 1.0, 1.0, 1.0], rejected=[0.0, 0.0, 0.0, 0.0])
    out, stats = _run(_stage([flaky, steady]), table)
    ids = table.column("id").to_pylist()
    assert out.table.column("id").to_pylist() == [ids[0], ids[2]]
    assert None not in out.table.column("margin").to_pylist() + out.table.column("chosen_score").to_pylist()
    assert [(r.row_id, r.reason.value) for r in out.rejects] == [(ids[1], "null_score"), (ids[3], "null_score")]
    assert "0:judge=truncated" in out.rejects[0].detail and "0:judge=no_score_tokens" in out.rejects[1].detail
    assert out.rejects[0].payload["member_margins"] == [None, 1.0]  # the row is kept in the rejects, scores and all
    assert stats.drops == {"null_score": 2}
    assert stats.counters["0:judge.null.truncated"] == 1 and stats.counters["0:judge.null.no_score_tokens"] == 1
    assert stats.counters["null_aggregate"] == 2

    skip, _ = _run(_stage([flaky, steady], null_policy="skip"), table)  # aggregate the members that scored
    assert skip.table.column("margin").to_pylist() == pytest.approx([2.5, 1.0, 1.0, 1.0])
    assert skip.table.column("member_margins").to_pylist()[1] == [None, 1.0]
    kept, _ = _run(_stage([flaky, steady], on_null="keep"), table)  # left for a later decision, never filled in
    assert kept.table.num_rows == 4 and kept.table.column("margin").to_pylist()[1] is None
    assert kept.rejects == []


def test_empty_shard_gets_the_columns(fixtures_dir):
    out, stats = _run(_stage([Scripted("a", chosen=[], rejected=[])]), _pairs(fixtures_dir).slice(0, 0))
    assert out.table.num_rows == 0 and out.rejects == []
    assert {"chosen_scores", "rejected_scores", "member_margins", "member_details"} <= set(out.table.column_names)
    assert out.table.schema.field("member_margins").type == pa.list_(pa.float64())


def test_score_stages_compose_by_appending(fixtures_dir):
    table = _pairs(fixtures_dir, 2)
    first, _ = _run(_stage([Scripted("a", chosen=[2.0, 0.0], rejected=[1.0, 1.0])]), table)
    second, stats = _run(_stage([Scripted("b", margins=[3.0, 1.0])]), first.table)
    rows = second.table.to_pylist()
    assert [r["member_margins"] for r in rows] == [[1.0, 3.0], [-1.0, 1.0]]
    assert [r["chosen_scores"] for r in rows] == [[2.0, None], [0.0, None]]
    assert [[d["name"] for d in r["member_details"]] for r in rows] == [["a", "b"]] * 2
    assert [r["margin"] for r in rows] == pytest.approx([2.0, 0.0])  # aggregate over the whole ensemble
    assert stats.counters["1:b.scored"] == 2  # member index continues after the earlier stage's


def test_aggregates_by_hand(fixtures_dir):
    table = _pairs(fixtures_dir, 1)
    members = [Scripted("a", chosen=[4.0], rejected=[1.0]), Scripted("b", chosen=[2.0], rejected=[1.0]),
               Scripted("c", margins=[-2.0])]
    margins = [3.0, 1.0, -2.0]
    expected = {"mean": sum(margins) / 3, "sum": sum(margins), "median": 1.0, "min": -2.0}
    for how, value in expected.items():
        out, _ = _run(_stage(members, aggregate=how), table)
        assert out.table.column("margin").to_pylist() == pytest.approx([value]), how
    out, _ = _run(_stage(members, aggregate="mean", weights=[2.0, 1.0, 1.0]), table)
    row = out.table.to_pylist()[0]
    assert row["margin"] == pytest.approx((2 * 3.0 + 1.0 - 2.0) / 4)
    assert row["chosen_score"] == pytest.approx((2 * 4.0 + 2.0) / 3)


def test_logsig_transform_by_hand(fixtures_dir):
    table = _pairs(fixtures_dir, 2)
    # Two pairs of one prompt: rm scores 4 distinct responses {3, 1, 5, 1}; r_ref = median of {1, 3, 5} = 3
    # (the repeated response "x" counts once).
    table = table.set_column(table.schema.get_field_index("prompt_id"), "prompt_id", pa.array(["p", "p"]))
    table = table.set_column(table.schema.get_field_index("rejected"), "rejected",
                             pa.array([[{"role": "assistant", "content": "x"}]] * 2, type=table.schema.field("rejected").type))
    rm = Scripted("rm", chosen=[3.0, 5.0], rejected=[1.0, 1.0])
    pw = Scripted("pw", margins=[2.0, -1.0])
    out, _ = _run(_stage([rm, pw], aggregate="sum", transform="logsig"), table)
    rows = out.table.to_pylist()
    u = {v: logsig(v - 3.0) for v in (1.0, 3.0, 5.0)}
    assert rows[0]["chosen_score"] == pytest.approx(u[3.0]) and rows[0]["rejected_score"] == pytest.approx(u[1.0])
    assert rows[0]["margin"] == pytest.approx(u[3.0] - u[1.0] + pair_margin(2.0))
    assert rows[1]["margin"] == pytest.approx(u[5.0] - u[1.0] + pair_margin(-1.0))
    assert rows[0]["member_margins"] == [2.0, 2.0]  # member columns keep the raw values


def test_config_validation():
    with pytest.raises(ValueError, match="weights apply to mean and sum"):
        ScoreConfig(members=[VerifierConfig()], aggregate="median", weights=[1.0])
    with pytest.raises(ValueError):
        ScoreConfig(members=[])
    stage = ScoreStage(ScoreConfig(members=[VerifierConfig()], weights=[1.0]))
    table = _pairs_table_with_lists()
    with pytest.raises(ValueError, match="1 weights for an ensemble of 2 members"):
        stage.run(table, BuildContext(engines=EnginePool({})))


def _pairs_table_with_lists():
    rows = read_pairs(REPO / "tests" / "data" / "pairs_small.jsonl", kind=SourceKind.PAIRS, limit=1).table
    first, _ = _run(_stage([Scripted("a", chosen=[1.0], rejected=[0.0])]), rows)
    return first.table


def test_pointwise_members_are_adapted_and_cited():
    stage = ScoreStage(ScoreConfig(members=[{"type": "judge"}, {"type": "pairwise_judge"}]))
    assert isinstance(stage.members[0], PointwisePairs) and stage.members[1].name == "pairwise_judge"
    recipe = {"source": {"path": "x.jsonl", "kind": "pairs"}, "stages": [{"type": "score", "members": [
        {"type": "judge"}, {"type": "pairwise_judge"}, {"type": "reward_model", "model": "some/rm"}]}]}
    stages = [make_stage(config) for config in parse_recipe(recipe).stages]
    cited = {(m.kind, m.name): m for m in method_citations(stages)}
    assert {("stage", "score"), ("scorer", "judge"), ("scorer", "pairwise_judge"), ("scorer", "reward_model")} <= set(cited)
    assert "zheng2023judging" in cited[("scorer", "judge")].bibtex
    assert "ouyang2022training" in cited[("scorer", "reward_model")].bibtex


def test_build_with_real_judges_and_a_reward_model(hf_engine, fixtures_dir, rm_folder, tmp_path):
    recipe = {
        "name": "score_small",
        "source": {"path": str(fixtures_dir / "pairs_small.jsonl"), "kind": "pairs", "limit": 2},
        "stages": [{"type": "score", "members": [
            {"type": "judge", "engine": "policy"},
            {"type": "pairwise_judge", "engine": "policy", "reconcile": "average"},
            {"type": "reward_model", "model": str(rm_folder)},
        ]}],
        "output": {"dir": str(tmp_path / "out")},
    }
    result = run_build(recipe, engines={"policy": hf_engine})
    rows = result.dataset.to_list()
    assert len(rows) == 2
    for row in rows:
        assert [d["name"] for d in row["member_details"]] == ["judge", "pairwise_judge", "reward_model"]
        judge_c, judge_r = row["chosen_scores"][0], row["rejected_scores"][0]
        assert 1.0 <= judge_c <= 10.0 and 1.0 <= judge_r <= 10.0
        assert row["member_margins"][0] == pytest.approx(judge_c - judge_r)
        assert row["chosen_scores"][1] is None and row["rejected_scores"][1] is None  # pairwise: only d
        extra = json.loads(row["member_details"][1]["extra"])
        assert {"p_chosen_ab", "p_chosen_ba", "verdict_ab", "verdict_ba"} <= set(extra)
        assert row["margin"] == pytest.approx(sum(row["member_margins"]) / 3)
    stage = result.stats["stages"][0]
    assert stage["counters"]["1:pairwise_judge.position_consistency__den"] == 2
    assert 0.0 <= stage["rates"]["1:pairwise_judge.position_consistency"] <= 1.0
    assert stage["counters"]["2:reward_model.scored"] == 2
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert "1:pairwise_judge.position_consistency" in stats["stages"][0]["rates"]


@pytest.mark.realdata
def test_score_hh_example_builds_on_real_pairs(hf_engine, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    result = run_build(REPO / "examples" / "score_hh.toml", output=tmp_path / "out", limit=2,
                       engines={"policy": hf_engine})
    stage = result.stats["stages"][0]
    assert result.stats["source"]["kind"] == "hh" and stage["rows_in"] == 2
    scored = stage["counters"]["0:judge.scored"], stage["counters"]["1:pairwise_judge.scored"]
    nulls = sum(v for k, v in stage["counters"].items() if ".null." in k)
    assert stage["rows_out"] + stage["drops"].get("null_score", 0) == 2 and sum(scored) + nulls == 4
    assert "1:pairwise_judge.position_consistency" in stage["rates"]
    for row in result.dataset.to_list():
        assert len(row["member_margins"]) == 2 and None not in row["member_margins"]
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
