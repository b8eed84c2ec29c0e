"""FLR pairs: on-policy samples from a real engine, scored by FLR, paired best vs worst."""

from __future__ import annotations

import pyarrow as pa
import pytest

from prefdata.engines import ChatFormatter
from prefdata.generators.flr import FLRPairsConfig, FLRPairsGenerator
from prefdata.generators.on_policy import OnPolicyGenerator
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.registry import STAGES, make_stage
from prefdata.schemas.pair import PROMPT_SCHEMA
from prefdata.scorers import FLRScorer, ScoreBatch

PROMPTS = pa.Table.from_pylist([
    {"id": "p1", "prompt": [{"role": "user", "content": "Name a fruit that is yellow."}], "reference": None},
    {"id": "p2", "prompt": [{"role": "user", "content": "Give me one tip for sleeping better."}], "reference": None},
], schema=PROMPT_SCHEMA)
CONFIG = FLRPairsConfig(n=3, sampling={"max_tokens": 16, "temperature": 1.0},
                        scorer={"type": "flr", "categories": ["correctness"]})


def test_flr_pairs_are_the_max_and_min_flr_samples(hf_engine):
    pool = EnginePool({})
    pool.put("policy", hf_engine)
    ctx = BuildContext(engines=pool, seed=3)
    stage = FLRPairsGenerator(CONFIG)
    stage.setup(ctx)
    out, stats = stage.run(PROMPTS, ctx)
    rows = out.table.to_pylist()
    assert rows and len(rows) + len(out.rejects) == 2
    assert stats.counters["responses"] == 6

    # Re-draw each prompt's samples with the stage's per-row seeds and score them all with FLR.
    formatter = ChatFormatter(hf_engine.tokenizer)
    scorer = FLRScorer(CONFIG.scorer, engine=hf_engine)
    for row in rows:
        prompt = next(p for p in PROMPTS.to_pylist() if p["id"] == row["prompt_id"])
        params = CONFIG.sampling.params(CONFIG.n, ctx.seed_for("flr", row["prompt_id"]))
        samples = [c.text for c in hf_engine.generate([formatter.prompt_ids(prompt["prompt"])], params)[0]]
        flr = scorer.score(ScoreBatch([prompt["prompt"]] * len(samples), samples)).values
        best = max(range(len(samples)), key=lambda i: flr[i])
        worst = min(range(len(samples)), key=lambda i: flr[i])
        assert row["chosen"][0]["content"] == samples[best]
        assert row["rejected"][0]["content"] == samples[worst]
        assert row["chosen_score"] == pytest.approx(flr[best], abs=1e-9)
        assert row["rejected_score"] == pytest.approx(flr[worst], abs=1e-9)
        assert row["margin"] > 0 and row["source"] == "flr"
        assert row["metadata"]["scorer"] == "flr" and row["metadata"]["strategy"] == "max_min"


def test_registered_and_reuses_on_policy():
    assert STAGES["flr"] == (FLRPairsConfig, FLRPairsGenerator)
    stage = make_stage(FLRPairsConfig())
    assert isinstance(stage, OnPolicyGenerator) and isinstance(stage.scorer, FLRScorer)
    assert FLRPairsGenerator.process is OnPolicyGenerator.process
    with pytest.raises(ValueError):
        FLRPairsConfig(scorer={"type": "judge"})
