"""On-policy generation: real engine end to end, and the pairing orchestration with a scripted engine."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from prefdata.engines import Completion, EngineConfig
from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.schemas.pair import PROMPT_SCHEMA
from prefdata.scorers.base import Scorer, ScoreResult


def _prompts(rows):
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


PROMPTS = _prompts([
    {"id": "a", "prompt": [{"role": "user", "content": "Give me one tip for sleeping better."}], "reference": None},
    {"id": "b", "prompt": [{"role": "user", "content": "Give me one tip for sleeping better."}], "reference": None},
    {"id": "c", "prompt": [{"role": "user", "content": "Name a fruit that is yellow."}], "reference": None},
])


def _context(engine, seed=0):
    pool = EnginePool({})
    pool.put("policy", engine)
    return BuildContext(engines=pool, seed=seed)


def _run(engine, config, table=PROMPTS, seed=0):
    stage = OnPolicyGenerator(config)
    ctx = _context(engine, seed)
    stage.setup(ctx)
    return stage.run(table, ctx)


@pytest.fixture(scope="module")
def vllm_pairs(vllm_engine):
    config = OnPolicyConfig(n=3, strategy="ranked", sampling={"max_tokens": 24, "temperature": 1.0})
    return _run(vllm_engine, config)


def test_real_engine_pairs_are_valid(vllm_pairs):
    out, stats = vllm_pairs
    rows = out.table.to_pylist()
    assert stats.rows_in == 3
    assert len(rows) + len(out.rejects) >= 3 and rows
    for row in rows:
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["chosen_score"] > row["rejected_score"]
        assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        assert 1.0 <= row["rejected_score"] < row["chosen_score"] <= 10.0
        assert row["source"] == "on_policy" and row["metadata"]["n_samples"] == 3
        assert row["metadata"]["policy"] == "embedded:smollm2-135m-instruct"
    assert len({r["id"] for r in rows}) == len(rows)
    # Prompts a and b have the same text but are distinct rows with their own samples.
    by_prompt = Counter(r["prompt_id"] for r in rows)
    assert set(by_prompt) | {r.row_id for r in out.rejects} >= {"a", "b", "c"}
    ranked = sorted((r for r in rows if r["prompt_id"] == "c"), key=lambda r: r["metadata"]["rank"])
    assert [r["metadata"]["rank"] for r in ranked] == list(range(len(ranked)))
    assert all(x["margin"] >= y["margin"] for x, y in zip(ranked, ranked[1:]))


def test_same_seed_same_pairs_other_seed_other_samples(vllm_engine, vllm_pairs):
    config = OnPolicyConfig(n=3, strategy="ranked", sampling={"max_tokens": 24, "temperature": 1.0})
    again, _ = _run(vllm_engine, config)
    assert again.table.equals(vllm_pairs[0].table)
    other, _ = _run(vllm_engine, config, seed=1)
    texts = {r["chosen"][0]["content"] for r in vllm_pairs[0].table.to_pylist()}
    assert texts != {r["chosen"][0]["content"] for r in other.table.to_pylist()}


def test_prompt_order_does_not_change_a_rows_samples(vllm_engine, vllm_pairs):
    config = OnPolicyConfig(n=3, strategy="ranked", sampling={"max_tokens": 24, "temperature": 1.0})
    reversed_out, _ = _run(vllm_engine, config, table=PROMPTS.take([2, 1, 0]))
    key = lambda t: sorted((r["id"], r["chosen"][0]["content"]) for r in t.to_pylist())  # noqa: E731
    assert key(reversed_out.table) == key(vllm_pairs[0].table)


class _ScriptedEngine:
    """Orchestration-only stand-in: returns the given texts as samples, in order."""

    model_id = "scripted"
    max_model_len = 1 << 20

    def __init__(self, tokenizer, texts_per_prompt):
        self.tokenizer, self.texts = tokenizer, texts_per_prompt

    def identity(self):
        return {"backend": "scripted"}

    def generate(self, prompts, params):
        return [[Completion(text=t, token_ids=(1,), logprobs=(-1.0,), finish_reason="stop") for t in self.texts[i]]
                for i in range(len(prompts))]


class _TableScorer(Scorer):
    name = "table"

    def __init__(self, scores):
        self.scores = scores

    def score(self, batch):
        values = [self.scores[r] for r in batch.responses]
        return ScoreResult(values, [None if v is not None else "no_answer" for v in values])


def test_ties_nulls_and_duplicates_never_pair_and_are_counted(hf_engine):
    texts = [["good", "bad", "meh"], ["same", "same", "same2"], ["x", "y", "z"], ["only", "nul1", "nul2"]]
    scores = {"good": 3.0, "bad": 1.0, "meh": 2.0, "same": 5.0, "same2": 5.0, "x": 2.0, "y": 2.0, "z": 2.0,
              "only": 1.0, "nul1": None, "nul2": None}
    table = _prompts([{"id": f"r{i}", "prompt": [{"role": "user", "content": "q"}], "reference": None} for i in range(4)])
    stage = OnPolicyGenerator(OnPolicyConfig(n=3))
    stage.engine = _ScriptedEngine(hf_engine.tokenizer, texts)
    stage.scorer = _TableScorer(scores)
    out, stats = stage.run(table, _context(stage.engine))
    rows = out.table.to_pylist()
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("good", "bad")]
    assert {r.row_id: r.reason.value for r in out.rejects} == {"r1": "no_pair", "r2": "no_pair", "r3": "no_pair"}
    assert stats.counters["duplicate_responses"] == 1
    assert stats.counters["no_pair_all_tied"] == 2
    assert stats.counters["null_scores"] == 2 and stats.counters["score_null_no_answer"] == 2
    assert stats.counters["no_pair_too_few_scored"] == 1
    assert stats.drops == {"no_pair": 3}
    kept = next(r for r in out.rejects if r.row_id == "r2")
    assert kept.payload["responses"] == ["x", "y", "z"]  # generations are not lost


def test_too_long_prompt_is_rejected_not_truncated(hf_engine):
    engine = _ScriptedEngine(hf_engine.tokenizer, [["a", "b"]])
    engine.max_model_len = 64
    stage = OnPolicyGenerator(OnPolicyConfig(n=2))
    stage.engine, stage.scorer = engine, _TableScorer({"a": 1.0, "b": 0.0})
    table = _prompts([{"id": "long", "prompt": [{"role": "user", "content": "word " * 200}], "reference": None}])
    out, stats = stage.run(table, _context(engine))
    assert out.table.num_rows == 0
    assert [(r.reason.value, r.field) for r in out.rejects] == [("prompt_too_long", "prompt")]


def test_engine_pool_shares_identical_configs():
    loaded = []
    pool = EnginePool({"policy": EngineConfig(backend="transformers"), "judge": EngineConfig(backend="transformers")},
                      loader=lambda cfg: loaded.append(cfg) or object())
    assert pool.get("policy") is pool.get("judge")
    assert len(loaded) == 1
    with pytest.raises(KeyError, match="not defined"):
        pool.get("missing")
