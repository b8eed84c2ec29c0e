"""Rationales: order randomised and stored, conclusion check, real engine on HH-RLHF pairs."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pyarrow as pa
import pytest

from prefdata.engines import ChatFormatter, Completion
from prefdata.generators.rationale import (
    ANSWER_PREFIX,
    RationaleConfig,
    RationaleStage,
    conclusion_check,
    stated_preference,
    trim_to_sentence,
)
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.schemas.formats import rationale_prompt
from prefdata.schemas.pair import pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE
from tests.generators.shipped import build_shipped

from ..test_trl_compat import dpo_one_step


def _pairs(n):
    rows = [{"id": f"p{i}", "prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"GOOD answer {i}."}],
             "rejected": [{"role": "assistant", "content": f"BAD answer {i}."}],
             "chosen_score": None, "rejected_score": None, "margin": None, "source": "input",
             "metadata": {"source_file": "x.jsonl", "source_row": i}} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=pair_schema(INPUT_METADATA_TYPE))


class ScriptedEngine:
    """Orchestration-only stand-in. The writer always argues for the response ABOVE (or, with
    `follow_hint`, for the side the prompt says is preferred); the conclusion judge puts its
    probability on the side the rationale names."""

    model_id = "scripted"
    max_model_len = 1 << 20

    def __init__(self, tokenizer, follow_hint=False):
        self.tokenizer, self.follow_hint = tokenizer, follow_hint
        formatter = ChatFormatter(tokenizer)
        probe = [{"role": "user", "content": "x"}]
        base = formatter.prompt_ids(probe, assistant_prefix=ANSWER_PREFIX)
        self.label_ids = {k: formatter.prompt_ids(probe, assistant_prefix=f"{ANSWER_PREFIX} {k}")[len(base):] for k in (1, 2)}
        self.writer_prompts = []

    def identity(self):
        return {"backend": "scripted"}

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            if "Which response does the explanation say is better?" in text:
                says_above = re.search(r'explanation of which response is better:\n"The response (\w+)', text).group(1) == "above"
                top = {t: 0.0 for k in (1, 2) for t in self.label_ids[k][:-1]}
                top[self.label_ids[1][-1]] = math.log(0.9 if says_above else 0.1)
                top[self.label_ids[2][-1]] = math.log(0.1 if says_above else 0.9)
                out.append([Completion("", (1,), (0.0,), "length", top_logprobs=(top,))])
            else:
                self.writer_prompts.append(text)
                side = re.search(r"The preferred response is the one (\w+)", text).group(1) if self.follow_hint else "above"
                out.append([Completion(f"The response {side} is better because it answers.", (1,), (-1.0,), "stop")])
        return out


def _run(engine, table, config=None, seed=0):
    pool = EnginePool({})
    pool.put("policy", engine)
    ctx = BuildContext(engines=pool, seed=seed)
    stage = RationaleStage(config or RationaleConfig())
    stage.setup(ctx)
    return stage.run(table, ctx)


def test_order_is_random_stored_and_shown_as_stored(hf_engine):
    engine = ScriptedEngine(hf_engine.tokenizer, follow_hint=True)
    out, stats = _run(engine, _pairs(40))
    rows = out.table.to_pylist()
    assert len(rows) == 40 and stats.drops == {}
    orders = Counter(r["rationale_order"] for r in rows)
    assert set(orders) == {"chosen_first", "rejected_first"} and min(orders.values()) >= 10
    assert stats.counters["order_chosen_first"] == orders["chosen_first"]
    for row, prompt in zip(rows, engine.writer_prompts):  # the writer saw the responses in the stored order
        above = prompt.index("Response above:")
        good, bad = prompt.index(f"GOOD answer {row['id'][1:]}."), prompt.index(f"BAD answer {row['id'][1:]}.")
        assert (above < good < bad) == (row["rationale_order"] == "chosen_first")
        expected = rationale_prompt(row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"],
                                    row["rationale_order"])[0]["content"]
        assert expected in prompt  # the trainer's conditioning prompt is what the writer saw
        assert row["rationale"].startswith("The response") and row["rationale_chosen_prob"] == 1.0  # names its side
    # Input columns pass through; the same seed gives the same orders, another seed others.
    assert out.table.column_names[:10] == _pairs(1).column_names
    again, _ = _run(ScriptedEngine(hf_engine.tokenizer, follow_hint=True), _pairs(40))
    assert again.table.column("rationale_order").to_pylist() == out.table.column("rationale_order").to_pylist()
    other, _ = _run(ScriptedEngine(hf_engine.tokenizer, follow_hint=True), _pairs(40), seed=1)
    assert other.table.column("rationale_order").to_pylist() != out.table.column("rationale_order").to_pylist()


def test_rationale_arguing_for_the_rejected_response_is_rejected(hf_engine):
    out, stats = _run(ScriptedEngine(hf_engine.tokenizer), _pairs(30))  # always argues for the response above
    rows = out.table.to_pylist()
    assert rows and all(r["rationale_order"] == "chosen_first" for r in rows)
    wrong = [r for r in out.rejects if r.reason.value == "rationale_wrong_side"]
    assert len(wrong) + len(rows) == 30 and stats.drops == {"rationale_wrong_side": len(wrong)}
    assert all(r.payload["rationale_order"] == "rejected_first" for r in wrong)
    unchecked, _ = _run(ScriptedEngine(hf_engine.tokenizer), _pairs(30), RationaleConfig(check_conclusion=False))
    assert unchecked.table.num_rows == 30


class NamesBelowJudgeSaysAbove(ScriptedEngine):
    """The observed failure: the writer names "Response below" as preferred whatever the hint says, and
    the (position-biased) conclusion judge puts 0.9 on "above"."""

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            if "Which response does the explanation say is better?" in text:
                top = {t: 0.0 for k in (1, 2) for t in self.label_ids[k][:-1]}
                top[self.label_ids[1][-1]], top[self.label_ids[2][-1]] = math.log(0.9), math.log(0.1)
                out.append([Completion("", (1,), (0.0,), "length", top_logprobs=(top,))])
            else:
                out.append([Completion("Response below is more preferable because it gives a clear and safe answer.",
                                       (1,), (-1.0,), "stop")])
        return out


def test_rationale_naming_the_rejected_reply_is_caught_although_the_judge_passed_it(hf_engine):
    out, stats = _run(NamesBelowJudgeSaysAbove(hf_engine.tokenizer), _pairs(30))
    wrong = [r for r in out.rejects if r.reason.value == "rationale_wrong_side"]
    rows = out.table.to_pylist()
    assert wrong and rows and len(wrong) + len(rows) == 30
    # chosen shown above: the text names the rejected response (below) -> rejected, though the judge said above
    assert all(r.payload["rationale_order"] == "chosen_first" for r in wrong)
    assert all("names the response below (the rejected one)" in r.detail for r in wrong)
    # chosen shown below: the text names the chosen one -> kept, the judge's "above" overruled
    assert all(r["rationale_order"] == "rejected_first" and r["rationale_chosen_prob"] == 1.0 for r in rows)
    assert stats.counters["conclusion_stated_chosen"] == len(rows)


@pytest.mark.parametrize(("text", "side"), [
    ("Response below is more preferable because it refuses to help with a crime.", "below"),
    ("The response above is better as it stays polite.", "above"),
    ("The first response is clearly preferred; it is safer.", "above"),
    ("The better response is the one below, since it declines.", "below"),
    ("I prefer the response above because it is honest.", "above"),
    ("The second answer is safer than the first one.", "below"),
    ("Response above is not better: it gives harmful advice. Response below is more helpful.", "below"),
    ("It is polite and declines the harmful request.", None),  # names no side: the judge decides
    ("The response above is better. The response below is preferable.", None),  # names both
    # "one is better" with no position (a generated rationale on vLLM once crashed the reader here)
    ("The choice is not one-to-one, as this one is better for tone and that one is safer.", None),
])
def test_stated_preference_reads_the_side_a_text_names(text, side):
    assert stated_preference(text) == side


def test_conclusion_check_lets_an_explicit_text_decide_and_the_judge_decide_the_rest():
    assert conclusion_check("The response below is better.", "chosen_first", (0.9, 0.1))[0] == "wrong_side"
    assert conclusion_check("The response below is better.", "rejected_first", (0.9, 0.1))[:2] == ("stated_chosen", 1.0)
    assert conclusion_check("It is kind.", "chosen_first", (0.8, 0.2))[:2] == ("judged_chosen", pytest.approx(0.8))
    assert conclusion_check("It is kind.", "rejected_first", (0.8, 0.2))[0] == "wrong_side"
    assert conclusion_check("It is kind.", "chosen_first", None)[0] == "no_verdict"


def test_trim_to_sentence():
    assert trim_to_sentence("It is clear. It is kind and") == "It is clear."
    assert trim_to_sentence("no end at all") == ""
    assert trim_to_sentence("Costs 2.5 dollars. Then") == "Costs 2.5 dollars."


@pytest.mark.realdata
def test_real_engine_on_hh_pairs_trains_in_trl(hf_engine, shared_data, tmp_path):
    from prefdata.builder import run_build

    recipe = {
        "name": "rationale_test",
        "source": {"path": str(shared_data / "hh_rlhf_harmless_test_1312.jsonl"), "kind": "hh", "limit": 6},
        "engines": {"policy": {"backend": "transformers"}},
        "stages": [{"type": "rationale", "sampling": {"temperature": 0.7, "max_tokens": 48}}],
        "output": {"dir": str(tmp_path / "out")},
    }
    result = run_build(recipe, engines={"policy": hf_engine})
    stage = json.loads((tmp_path / "out" / "stats.json").read_text())["stages"][0]
    rows = result.dataset.to_list()
    assert stage["rows_in"] == 6 and stage["rows_out"] == len(rows)
    assert stage["rows_out"] + sum(stage["drops"].values()) == 6  # every dropped pair has a reason
    assert set(stage["drops"]) <= {"rationale_empty", "rationale_wrong_side", "rationale_no_verdict"}
    for row in rows:
        assert row["rationale"].strip() and row["rationale_order"] in {"chosen_first", "rejected_first"}
        assert row["rationale_chosen_prob"] > 0.5
    if rows:
        dpo_one_step(result.dataset, hf_engine.tokenizer, tmp_path, max_length=2048)


@pytest.mark.realdata
def test_recipe_as_shipped_runs_on_vllm(vllm_engine, shared_data, tmp_path):
    _, stage = build_shipped("rationales_hh.toml", shared_data / "hh_rlhf_harmless_test_1312.jsonl", vllm_engine,
                             tmp_path, limit=3)
    assert stage["rows_out"] + sum(stage["drops"].values()) == 3
    assert stage["counters"].get("order_chosen_first", 0) + stage["counters"].get("order_rejected_first", 0) == 3


def test_stages_compose_after_any_pair_source():
    from prefdata.generators.hindsight import HindsightGenerator
    from prefdata.generators.on_policy import OnPolicyGenerator
    from prefdata.generators.rise import RiseGenerator
    from prefdata.pipeline.stage import check_chain
    from prefdata.schemas.pair import PROMPT_SCHEMA

    prompt_columns, pair_columns = PROMPT_SCHEMA.names, _pairs(1).column_names
    for chain, columns in (([RiseGenerator(), RationaleStage()], prompt_columns),
                           ([OnPolicyGenerator(), HindsightGenerator(), RationaleStage()], prompt_columns),
                           ([RationaleStage(), HindsightGenerator()], pair_columns),
                           ([HindsightGenerator()], prompt_columns)):
        out = check_chain(chain, columns)
        assert {"id", "prompt", "chosen", "rejected"} <= set(out)
