"""RLHS hindsight: every field stored, pairs follow hindsight ratings, flips counted; real engine end to end."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pytest

from prefdata.engines import ChatFormatter, Completion
from prefdata.generators.hindsight import (
    LABELS,
    RATING_PREFIX,
    HindsightConfig,
    HindsightGenerator,
    expected_rating,
    first_sentences,
)
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.schemas.pair import PROMPT_SCHEMA, pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE
from tests.generators.shipped import build_shipped

from ..test_trl_compat import dpo_one_step

# Rating distributions (over 1..5) the scripted evaluator gives. "FLATTER" looks good at first and
# ends badly; "HONEST" looks plain and ends well; "SAME*" get equal hindsight ratings; "MUTE" no mass.
IMMEDIATE = {"FLATTER": [0, 0, 0, 0.5, 0.5], "HONEST": [0, 0, 1, 0, 0], "PLAIN": [0, 0, 1, 0, 0], "SAME1": [0, 1, 0, 0, 0],
             "SAME2": [0, 0, 0, 1, 0], "MUTE": [0, 0, 1, 0, 0]}
HINDSIGHT = {"FLATTER": [0.6, 0.4, 0, 0, 0], "HONEST": [0, 0, 0, 0.2, 0.8], "PLAIN": [0, 0, 0.5, 0.5, 0], "SAME1": [0, 0, 1, 0, 0],
             "SAME2": [0, 0, 1, 0, 0], "MUTE": None}


class ScriptedEngine:
    """Orchestration-only stand-in for the policy, the simulator and the evaluator."""

    model_id = "scripted"
    max_model_len = 1 << 20

    def __init__(self, tokenizer, samples=None):
        self.tokenizer, self.samples = tokenizer, samples or {}
        formatter = ChatFormatter(tokenizer)
        probe = [{"role": "user", "content": "x"}]
        base = formatter.prompt_ids(probe, assistant_prefix=RATING_PREFIX)
        self.label_ids = {k: formatter.prompt_ids(probe, assistant_prefix=f"{RATING_PREFIX} {k}")[len(base):] for k in LABELS}
        self.calls = []

    def identity(self):
        return {"backend": "scripted"}

    def _rating(self, probs):
        top = {t: 0.0 for k in LABELS for t in self.label_ids[k][:-1]}
        for k, p in zip(LABELS, probs or [0] * 5):
            if p > 0:
                top[self.label_ids[k][-1]] = math.log(p)
        return [Completion("", (1,), (0.0,), "length", top_logprobs=(top,))]

    def generate(self, prompts, params):
        texts = [self.tokenizer.decode(p) for p in prompts]
        kind = "rate" if "Rate your satisfaction" in texts[0] else "simulate" if "describe what happened" in texts[0] else "sample"
        self.calls.append((kind, len(prompts)))
        out = []
        for text in texts:
            if kind == "sample":
                question = re.search(r"user\n(.*?)<\|im_end\|>", text, re.S).group(1)
                out.append([Completion(t, (1,), (-1.0,), "stop") for t in self.samples[question]])
            elif kind == "simulate":
                word = re.search(r"\[Assistant response\]\n(\w+)", text).group(1)
                outcome = "The user lost money. They were upset. Later they sued." if word == "FLATTER" else \
                    f"The user was fine after {word}. Nothing else."
                out.append([Completion(outcome, (1,), (-1.0,), "stop")])
            else:
                word = re.search(r"\[Assistant response\]\n(\w+)", text).group(1)
                table = HINDSIGHT if "[What happened after you followed it]" in text else IMMEDIATE
                out.append(self._rating(table[word]))
        return out


def _context(engine, seed=0):
    pool = EnginePool({})
    pool.put("policy", engine)
    return BuildContext(engines=pool, seed=seed)


def _run(engine, table, config=None):
    ctx = _context(engine)
    stage = HindsightGenerator(config or HindsightConfig())
    stage.setup(ctx)
    return stage.run(table, ctx)


def _pairs(pairs):
    rows = [{"id": f"in{i}", "prompt_id": f"q{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}],
             "chosen_score": None, "rejected_score": None, "margin": None, "source": "input",
             "metadata": {"source_file": "x", "source_row": i}} for i, (c, r) in enumerate(pairs)]
    return pa.Table.from_pylist(rows, schema=pair_schema(INPUT_METADATA_TYPE))


def test_given_pairs_follow_hindsight_and_store_every_field(hf_engine):
    engine = ScriptedEngine(hf_engine.tokenizer)
    table = _pairs([("FLATTER offer", "HONEST offer"), ("HONEST offer", "PLAIN offer"), ("SAME1 a", "SAME2 b"),
                    ("MUTE a", "HONEST b")])
    out, stats = _run(engine, table)
    # One call each for the whole shard: 8 outcomes; 16 ratings (x the label-token trie's inner nodes).
    assert [kind for kind, _ in engine.calls] == ["simulate", "rate"]
    assert engine.calls[0][1] == 8 and engine.calls[1][1] % 16 == 0
    rows = {r["prompt_id"]: r for r in out.table.to_pylist()}
    assert set(rows) == {"q0", "q1"}
    flip = rows["q0"]
    assert flip["chosen"][0]["content"] == "HONEST offer" and flip["rejected"][0]["content"] == "FLATTER offer"
    meta = flip["metadata"]
    assert meta["chosen_hindsight"] == pytest.approx(4.8) and meta["rejected_hindsight"] == pytest.approx(1.4)
    assert meta["chosen_immediate"] == pytest.approx(3.0) and meta["rejected_immediate"] == pytest.approx(4.5)
    assert flip["chosen_score"] == meta["chosen_hindsight"] and flip["margin"] == pytest.approx(3.4)
    assert meta["chosen_outcome"] == "The user was fine after HONEST. Nothing else."
    assert meta["rejected_outcome"] == "The user lost money. They were upset."  # cut to two sentences
    assert meta["immediate_preference"] == "rejected" and meta["flipped"] is True
    assert meta["input_label_kept"] is False and meta["response_source"] == "given" and meta["input_pair_id"] == "in0"
    kept = rows["q1"]["metadata"]
    assert kept["immediate_preference"] == "tie" and kept["flipped"] is False  # equal immediate ratings
    assert kept["input_label_kept"] is True
    assert {r.row_id: r.reason.value for r in out.rejects} == {"in2": "hindsight_tie", "in3": "hindsight_null_rating"}
    assert stats.counters["flipped"] == 1 and stats.drops == {"hindsight_tie": 1, "hindsight_null_rating": 1}


def test_flips_follow_hindsight_ratings_on_sampled_prompts(hf_engine):
    samples = {"Q0?": ["FLATTER x", "HONEST y"], "Q1?": ["HONEST y", "PLAIN z"], "Q2?": ["PLAIN z", "PLAIN z"]}
    engine = ScriptedEngine(hf_engine.tokenizer, samples)
    table = pa.Table.from_pylist([{"id": f"q{i}", "prompt": [{"role": "user", "content": q}], "reference": None}
                                  for i, q in enumerate(samples)], schema=PROMPT_SCHEMA)
    out, stats = _run(engine, table)
    assert [kind for kind, _ in engine.calls] == ["sample", "simulate", "rate"]
    rows = out.table.to_pylist()
    assert stats.drops == {"chosen_equals_rejected": 1}
    for row in rows:
        meta = row["metadata"]
        assert row["chosen_score"] > row["rejected_score"]  # the pair follows hindsight
        immediate_gap = meta["chosen_immediate"] - meta["rejected_immediate"]
        assert meta["flipped"] == (immediate_gap < 0)
        assert meta["response_source"] == "sampled" and meta["input_label_kept"] is None
    assert sum(r["metadata"]["flipped"] for r in rows) == stats.counters["flipped"] == 1


def test_helpers():
    assert first_sentences("One. Two! Three?", 2) == "One. Two!"
    assert first_sentences("no stop", 2) == "no stop"
    assert expected_rating({1: 0.5, 5: 0.5}, 0.05) == pytest.approx(3.0)
    assert expected_rating({1: 0.01}, 0.05) is None


@pytest.mark.realdata
def test_real_engine_sampled_prompts_end_to_end(hf_engine, shared_data, tmp_path):
    from prefdata.builder import run_build

    recipe = {
        "name": "hindsight_test",
        "source": {"path": str(shared_data / "oasst_prompt_lottery_150.jsonl"), "limit": 3},
        "engines": {"policy": {"backend": "transformers"}},
        "stages": [{"type": "hindsight", "sampling": {"temperature": 1.0, "max_tokens": 32},
                    "simulator_sampling": {"temperature": 0.7, "max_tokens": 32}}],
        "output": {"dir": str(tmp_path / "out")},
    }
    result = run_build(recipe, engines={"policy": hf_engine})
    stage = json.loads((tmp_path / "out" / "stats.json").read_text())["stages"][0]
    rows = result.dataset.to_list()
    assert stage["rows_out"] + sum(stage["drops"].values()) == 3
    assert rows, stage
    for row in rows:
        meta = row["metadata"]
        assert isinstance(meta["chosen_outcome"], str) and isinstance(meta["rejected_outcome"], str)
        assert 1 <= meta["rejected_hindsight"] < meta["chosen_hindsight"] <= 5
        assert all(1 <= meta[k] <= 5 for k in ("chosen_immediate", "rejected_immediate"))
        assert meta["flipped"] == (meta["chosen_immediate"] < meta["rejected_immediate"])
    dpo_one_step(result.dataset, hf_engine.tokenizer, tmp_path, max_length=1024)


@pytest.mark.realdata
def test_recipe_as_shipped_runs_on_vllm(vllm_engine, shared_data, tmp_path):
    result, stage = build_shipped("hindsight.toml", shared_data / "hh_rlhf_harmless_test_1312.jsonl", vllm_engine,
                                  tmp_path, limit=3)
    assert stage["rows_out"] + sum(stage["drops"].values()) == 3
    for row in result.dataset.to_list():
        assert row["metadata"]["response_source"] == "given" and row["metadata"]["chosen_hindsight"] is not None
