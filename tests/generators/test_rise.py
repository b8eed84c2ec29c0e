"""RISE: the edit rules with a scripted editor, then the real embedded engine end to end."""

from __future__ import annotations

import json
import re
from collections import Counter

import pyarrow as pa
import pytest

from prefdata.engines import Completion
from prefdata.generators import rise_edits as edits
from prefdata.generators.rise import RiseConfig, RiseGenerator
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.schemas.pair import PROMPT_SCHEMA
from tests.generators.shipped import build_shipped

from ..test_trl_compat import dpo_one_step

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
REFERENCE = "He has 3+4=<<3+4=7>>7 apples.\n#### 7"
CORRECT = "Tom starts with 3 apples.\nStep 2: He buys 4 more, so 3 + 4 = 7.\nStep 3: The answer is \\boxed{7}."
WRONG = "Tom starts with 3 apples.\nStep 2: He buys 4 more, so 3 + 4 = 8.\nStep 3: The answer is \\boxed{8}."
SELF_CORRECTING = "3 + 4 = 8. Wait, that is a mistake, 3 + 4 = 7.\nStep 2: The answer is \\boxed{7}."


class ScriptedEngine:
    """Orchestration-only stand-in: solutions from a table, edits from a function of the target."""

    model_id = "scripted"
    max_model_len = 1 << 20

    def __init__(self, tokenizer, solutions, editor):
        self.tokenizer, self.solutions, self.editor = tokenizer, solutions, editor
        self.calls = []

    def identity(self):
        return {"backend": "scripted"}

    def generate(self, prompts, params):
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.calls.append(len(prompts))
        out = []
        for text, p in zip(texts, params):
            if "Part to rewrite:" in text:
                target = re.search(r"Part to rewrite:\n```\n(.*?)\n```", text, re.S).group(1)
                out.append([Completion(self.editor(target), (1,), (-1.0,), "stop")])
            else:
                question = re.search(r"user\n(.*?)\nPlease reason", text, re.S).group(1)
                out.append([Completion(t, (1,), (-1.0,), "stop") for t in self.solutions[question][: p.n]])
        return out


def _table(rows):
    return pa.Table.from_pylist([{"id": i, "prompt": [{"role": "user", "content": q}], "reference": ref}
                                 for i, q, ref in rows], schema=PROMPT_SCHEMA)


def _run(engine, config, table, seed=0):
    pool = EnginePool({})
    pool.put("policy", engine)
    ctx = BuildContext(engines=pool, seed=seed)
    stage = RiseGenerator(config)
    stage.setup(ctx)
    return stage.run(table, ctx)


def _bump_first_number(target):
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 5), target, count=1)


def _apply_spans(chosen, rejected, spans):
    """chosen with each chosen-side span replaced by the matching rejected-side text."""
    by_side = {"chosen": [s for s in spans if s["side"] == "chosen"], "rejected": [s for s in spans if s["side"] == "rejected"]}
    assert len(by_side["chosen"]) == len(by_side["rejected"])
    out, cursor = [], 0
    for c, r in zip(by_side["chosen"], by_side["rejected"]):
        out += [chosen[cursor:c["char_start"]], rejected[r["char_start"]:r["char_end"]]]
        cursor = c["char_end"]
    return "".join(out) + chosen[cursor:]


def test_spans_cover_exactly_the_edited_characters_and_prefix_is_shared(hf_engine):
    engine = ScriptedEngine(hf_engine.tokenizer, {QUESTION: [CORRECT, WRONG]}, _bump_first_number)
    config = RiseConfig(k=2, edits_per_question=4)
    out, stats = _run(engine, config, _table([("q1", QUESTION, REFERENCE)]))
    assert engine.calls == [1, 4]  # one call for all solutions, one for all edits
    rows = out.table.to_pylist()
    full = [r for r in rows if r["metadata"]["pair_type"] == "full_solution"]
    assert len(full) == 1 and full[0]["chosen"][0]["content"].endswith("\\boxed{7}.")
    assert full[0]["rejected"][0]["content"].endswith("\\boxed{8}.")
    assert full[0]["metadata"]["solution_source"] == "sampled"
    edited = [r for r in rows if r["metadata"]["pair_type"] == "self_edit"]
    assert edited, stats.drops
    for row in edited:
        meta = row["metadata"]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        prefix = chosen[: meta["prefix_chars"]]
        assert rejected[: meta["prefix_chars"]] == prefix  # the prefix is shared by both sides
        assert prefix.startswith(edits.SOLVE_PREFILL[:-8]) and row["prompt"][-1]["content"].startswith(QUESTION)
        spans = meta["edit_spans"]
        assert spans and all(s["char_start"] >= meta["prefix_chars"] for s in spans)
        # Exact cover: swapping the spans turns chosen into rejected, and each span is one whole number.
        assert _apply_spans(chosen, rejected, spans) == rejected
        for s in spans:
            text = (chosen if s["side"] == "chosen" else rejected)[s["char_start"]:s["char_end"]]
            assert re.fullmatch(r"\d+", text)
        number = [s for s in spans if s["side"] == "chosen"][0]
        assert int(rejected[[s for s in spans if s["side"] == "rejected"][0]["char_start"]:][:2].rstrip(" +.")) == \
            int(chosen[number["char_start"]:number["char_end"]]) + 5
        # Token spans index the policy tokenizer's tokens of the same content.
        offsets = hf_engine.tokenizer(chosen, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        first, last = offsets[number["token_start"]], offsets[number["token_end"] - 1]
        assert first[0] <= number["char_start"] < first[1] and last[0] < number["char_end"] <= last[1]
        assert meta["error_type"] in {t.value for t in edits.applicable_error_types(chosen[meta["prefix_chars"]:])}
        assert row["chosen_score"] == 1.0 and row["rejected_score"] == 0.0


def test_giveaway_unchanged_large_and_harmless_edits_are_dropped_with_reasons(hf_engine):
    questions = {f"Question {name}?": [CORRECT] for name in ("a", "b", "c", "d")}
    editors = {
        "a": lambda t: t + " This is incorrect.",
        "b": lambda t: t,
        "c": lambda t: "Something else entirely, with many new words that replace all of it: 12 + 12 = 24.",
        "d": lambda t: t.replace("Tom", "Tim").replace("He", "She"),  # words only: no calculation changed
    }
    answers = iter([])

    def editor(target):
        return next(answers)(target)

    engine = ScriptedEngine(hf_engine.tokenizer, questions, editor)
    table = _table([(f"q{n}", q, REFERENCE) for n, q in zip("abcd", questions)])
    answers = iter(editors[n] for n in "abcd")
    out, stats = _run(engine, RiseConfig(k=1, full_solution_pairs=False), table)
    reasons = {r.row_id: r.reason.value for r in out.rejects if r.field == "edit"}
    assert reasons == {"qa": "edit_giveaway", "qb": "edit_unchanged", "qc": "edit_too_large", "qd": "edit_no_error"}
    assert out.table.num_rows == 0
    assert stats.drops["no_pair"] == 4


def test_last_step_edit_must_change_the_final_answer(hf_engine):
    one_step = "The answer is 3 + 4 = \\boxed{7}."
    engine = ScriptedEngine(hf_engine.tokenizer, {QUESTION: [one_step]}, lambda t: t.replace("3 + 4", "4 + 3"))
    out, _ = _run(engine, RiseConfig(k=1, full_solution_pairs=False), _table([("q", QUESTION, REFERENCE)]))
    assert [(r.reason.value, r.detail) for r in out.rejects if r.field == "edit"] == [
        ("edit_no_error", "the final answer is still right")]
    engine = ScriptedEngine(hf_engine.tokenizer, {QUESTION: [one_step]}, lambda t: t.replace("{7}", "{8}"))
    out, _ = _run(engine, RiseConfig(k=1, full_solution_pairs=False), _table([("q", QUESTION, REFERENCE)]))
    assert out.table.num_rows == 1


def test_error_type_is_always_applicable_and_all_types_occur(hf_engine):
    steps = ["Tom is 5 years old and Ann is 7.", "So 5 + 7 = 12 years together.", "Ann is older than Tom.",
             "x = y + z", "Their ages are 5, 7 and 12. Then 12 * 2 = 24 is twice the sum."]
    solution = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, start=1))[len("Step 1: "):] + \
        "\nStep 6: The answer is \\boxed{24}."
    questions = {f"How old are they {i}?": [solution] for i in range(12)}
    engine = ScriptedEngine(hf_engine.tokenizer, questions, lambda t: t + "!")
    table = _table([(f"q{i}", q, "#### 24") for i, q in enumerate(questions)])
    out, _ = _run(engine, RiseConfig(k=1, edits_per_question=6, full_solution_pairs=False), table)
    seen = Counter()
    for reject in out.rejects:
        if reject.field == "edit":
            payload = reject.payload
            assert payload["error_type"] in {t.value for t in edits.applicable_error_types(payload["target"])}
            seen[payload["error_type"]] += 1
    for row in out.table.to_pylist():  # accepted edits: the edited text follows the prefix
        meta = row["metadata"]
        target = row["chosen"][0]["content"][meta["prefix_chars"]:]
        assert meta["error_type"] in {t.value for t in edits.applicable_error_types(target)}
        seen[meta["error_type"]] += 1
    assert sum(seen.values()) == 72
    assert set(seen) == {t.value for t in edits.ErrorType}
    assert edits.applicable_error_types("Ann is older than Tom.") == [edits.ErrorType.MISUNDERSTANDING]


def test_self_correcting_sample_is_not_chosen_and_reference_fallback_is_labelled(hf_engine):
    engine = ScriptedEngine(hf_engine.tokenizer, {QUESTION: [SELF_CORRECTING, WRONG]}, _bump_first_number)
    out, stats = _run(engine, RiseConfig(k=2, edits_per_question=0), _table([("q", QUESTION, REFERENCE)]))
    assert out.table.num_rows == 0 and stats.drops == {"no_correct_solution": 1}
    assert stats.counters["self_correcting_excluded"] == 1
    out, stats = _run(engine, RiseConfig(k=2, reference_fallback=True), _table([("q", QUESTION, REFERENCE)]))
    rows = out.table.to_pylist()
    assert {r["metadata"]["solution_source"] for r in rows} == {"reference_fallback"}
    full = next(r for r in rows if r["metadata"]["pair_type"] == "full_solution")
    assert full["chosen"][0]["content"] == "Let's think step by step.\nStep 1: He has 3+4=7 apples.\n" \
        "Step 2: The final answer is \\boxed{7}."
    assert full["metadata"]["chosen_index"] == -1 and stats.counters["reference_fallback_used"] == 1


def test_step_helpers():
    steps = edits.split_steps("Intro\nStep 1: a. b.\nStep 2: c = 2.5 + 1.")
    assert steps.header == "Intro\n" and steps.steps == ("Step 1: a. b.\n", "Step 2: c = 2.5 + 1.")
    assert edits.split_tail("One. Two. Three. Four. Five.", 4) == ("One. ", "Two. Three. Four. Five.")
    assert edits.split_tail("It costs 2.5 dollars.", 4) == ("", "It costs 2.5 dollars.")
    assert edits.word_edit_distance("3 + 4 = 7", "3 + 4 = 8") == pytest.approx(1 / 5)
    assert [(s.side, s.char_start, s.char_end) for s in edits.diff_spans("so 60 cups", "so 65 cups")] == [
        ("chosen", 3, 5), ("rejected", 3, 5)]


@pytest.mark.realdata
def test_real_engine_five_gsm8k_questions_end_to_end(hf_engine, shared_data, tmp_path):
    """The embedded model on 5 GSM8K questions, plus other models' real solutions (so the
    full-solution path has correct and incorrect candidates): pairs, drop counts in stats.json."""
    from prefdata.builder import run_build

    recipe = {
        "name": "rise_test",
        "source": {"path": str(shared_data / "gsm8k_test_300.jsonl"), "limit": 5,
                   "columns": {"prompt": "question", "reference": "answer"}},
        "engines": {"policy": {"backend": "transformers"}},
        "stages": [{"type": "rise", "k": 2, "edits_per_question": 1, "reference_fallback": True,
                    "sampling": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 48},
                    "edit_sampling": {"temperature": 0.7, "max_tokens": 48},
                    "extra_solutions": {"path": str(shared_data / "gsm8k_model_solutions_300.jsonl"),
                                        "fields": ["6b_finetuning.solution", "175b_verification.solution"]}}],
        "output": {"dir": str(tmp_path / "out")},
    }
    result = run_build(recipe, engines={"policy": hf_engine})
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    stage = stats["stages"][0]
    assert stage["rows_in"] == 5
    assert stage["counters"]["samples"] == 10 and stage["counters"]["edits_attempted"] == 5
    edit_drops = {k: v for k, v in stage["drops"].items() if k.startswith("edit_")}
    assert stage["counters"]["edits_accepted"] + sum(edit_drops.values()) == 5  # every edit accounted for
    print(json.dumps(stage, indent=1))
    rows = result.dataset.to_list()
    full = [r for r in rows if r["metadata"]["pair_type"] == "full_solution"]
    assert full, stage
    for row in full:
        assert row["chosen"] != row["rejected"]
        assert row["metadata"]["solution_source"] in {"sampled", "extra", "reference_fallback"}
    for row in rows:
        if row["metadata"]["pair_type"] == "self_edit":
            meta = row["metadata"]
            assert row["chosen"][0]["content"][: meta["prefix_chars"]] == row["rejected"][0]["content"][: meta["prefix_chars"]]
            assert meta["edit_spans"] and meta["error_type"] in {t.value for t in edits.ErrorType}
    dpo_one_step(result.dataset, hf_engine.tokenizer, tmp_path, max_length=1024)  # TRL trains on it unchanged


@pytest.mark.realdata
def test_recipe_as_shipped_runs_on_vllm(vllm_engine, shared_data, tmp_path):
    """examples/rise_gsm8k.toml unchanged (its vLLM engine, sampling, fallback) on 2 questions."""
    result, stage = build_shipped("rise_gsm8k.toml", shared_data / "gsm8k_test_300.jsonl", vllm_engine, tmp_path, limit=2)
    assert stage["counters"]["samples"] == 10 and stage["counters"]["edits_attempted"] == 4
    assert stage["counters"]["edits_accepted"] + sum(v for k, v in stage["drops"].items() if k.startswith("edit_")) == 4
    rows = result.dataset.to_list()
    assert {r["metadata"]["pair_type"] for r in rows} >= {"full_solution"}  # the fallback makes a chosen side
