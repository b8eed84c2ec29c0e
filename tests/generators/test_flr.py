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


@pytest.mark.realdata
def test_example_recipe_builds_real_pairs(hf_engine, shared_data, tmp_path, monkeypatch):
    """examples/flr_pairs.toml on 2 real prompts (shorter samples; the test's engine is transformers)."""
    import json

    from prefdata.builder import run_build
    from prefdata.recipe import load_recipe

    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    recipe = load_recipe("examples/flr_pairs.toml").resolved()
    recipe["stages"][0]["n"] = 3
    recipe["stages"][0]["sampling"]["max_tokens"] = 16
    recipe["stages"][0]["scorer"]["categories"] = ["correctness"]  # 2 + 2 follow-ups keep the CPU test short
    result = run_build(recipe, limit=2, output=tmp_path / "out", engines={"policy": hf_engine})
    rows = result.dataset.to_list()
    stage = result.stats["stages"][0]
    assert stage["name"] == "flr" and stage["rows_in"] == 2 and stage["counters"]["responses"] == 6
    assert len(rows) + stage["drops"].get("no_pair", 0) == 2 and rows
    for row in rows:
        assert row["source"] == "flr" and row["chosen_score"] > row["rejected_score"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    recipe_json = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert recipe_json["stages"][0]["scorer"]["type"] == "flr"
