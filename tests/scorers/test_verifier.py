"""Math verifier: final-answer extraction and exact comparison, null (with a code) when unanswerable."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from prefdata.scorers import MathVerifier, ScoreBatch, VerifierConfig, make_scorer
from prefdata.scorers.verifier import extract_answer, parse_number

PROMPT = [{"role": "user", "content": "q"}]
MODEL_FIELDS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def score(responses, references):
    batch = ScoreBatch(prompts=[PROMPT] * len(responses), responses=responses, references=references)
    return MathVerifier().score(batch)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # GSM8K reference form
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", 72),
        ("#### 1,234", 1234),
        ("#### -5", -5),
        ("#### 0.750", Fraction(3, 4)),
        # \boxed{}
        (r"So the total is $\boxed{18}$.", 18),
        (r"\boxed{3/4}", Fraction(3, 4)),
        (r"\boxed{ 2,500 }", 2500),
        (r"\boxed{\text{\$} 12}", 12),
        (r"\boxed{12 \text{ apples}}", 12),
        # "The answer is N"
        ("The answer is 42.", 42),
        ("Therefore the final answer is **27**", 27),
        ("Final answer: 9", 9),
        ("the answer is $1,000.00.", 1000),
        ("The answer is .5 of a cake", Fraction(1, 2)),
        ("The answer is 3 / 4", Fraction(3, 4)),
        ("The answer is 12 apples, which is a lot", 12),
        ("The answer is 5, done.", 5),
        ("The answer is -$7.", -7),
        # GSM8K model solutions: "A: N" on its own line
        ("She has 5+3=<<5+3=8>>8 apples.\nA: 8", 8),
        ("A:  $ 2,500", 2500),
        ("A: 0.25", Fraction(1, 4)),
    ],
)
def test_extract_answer_forms(text, expected):
    assert extract_answer(text) == expected


def test_priority_and_last_occurrence():
    assert extract_answer(r"\boxed{5} and then #### 7") == 7  # '####' first
    assert extract_answer("The answer is 3.\nA: 9") == 3  # 'answer is' before 'A:'
    assert extract_answer(r"The answer is 2. \boxed{6}") == 6  # \boxed before 'answer is'
    assert extract_answer("The answer is 3. Wait, no: the answer is 4.") == 4  # the last one


def test_no_answer_form_is_none_not_zero():
    for text in ["I think it's about 5 apples", "", "There is no way to tell.", "answer = 3", "Q: 4"]:
        assert extract_answer(text) is None
    assert extract_answer("I think it's about 5 apples", last_number_fallback=True) is None  # states no result
    assert extract_answer("Half of 10 is 5.\nSo she has 5 apples left.", last_number_fallback=True) == 5
    assert extract_answer("She buys 3 more.\n**8**", last_number_fallback=True) == 8  # a bare final number
    assert extract_answer("about 1,200.50 or so", last_number_fallback=True) == Fraction(240100, 200)
    assert extract_answer("no numbers at all", last_number_fallback=True) is None
    assert extract_answer(r"\boxed{1/0}") is None  # division by zero is no answer


@pytest.mark.parametrize(
    ("a", "b"),
    [("1,000.00", "1000"), ("$1,000", "1000"), ("3/4", "0.75"), ("0.50", ".5"), ("-$3", "-3"), ("6 / 8", "0.750")],
)
def test_parse_number_equalities(a, b):
    assert parse_number(a) == parse_number(b)
    assert parse_number(a) is not None


def test_parse_number_rejects_garbage():
    assert parse_number("abc") is None
    assert parse_number("1/0") is None
    assert parse_number("1,000") != parse_number("100")


def test_verifier_scores():
    reference = "Some working.\n#### 1,200"
    result = score(
        ["The answer is 1200.", "#### 1,200.00", r"\boxed{1200}", "A: $1,200", "The answer is 1201.", "#### 120",
         "It is 1200 I think", "The answer is 0."],
        [reference] * 8,
    )
    assert result.values == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, None, 0.0]
    assert result.errors == [None, None, None, None, None, None, "no_answer", None]
    assert result.error_counts() == {"no_answer": 1}


def test_fractions_and_decimals_compare_exactly():
    result = score(["The answer is 3/4", "The answer is 0.75", "The answer is 0.7500001"], ["#### 0.75"] * 3)
    assert result.values == [1.0, 1.0, 0.0]


def test_missing_and_unparseable_references():
    result = score(["The answer is 4", "The answer is 4", "The answer is 4"], [None, "no number here", "#### 4"])
    assert result.values == [None, None, 1.0]
    assert result.errors == ["no_reference", "unparseable_reference", None]
    no_refs = MathVerifier().score(ScoreBatch(prompts=[PROMPT], responses=["The answer is 4"]))
    assert no_refs.values == [None] and no_refs.errors == ["no_reference"]


def test_reference_without_final_form_uses_its_last_number():
    assert score(["The answer is 12"], ["12"]).values == [1.0]
    assert score(["The answer is 12"], ["She has 3 boxes of 4, so 12"]).values == [1.0]


# The observed case: a degenerate sample from the 135M policy that the old fallback (the last number
# anywhere) read as 15 and labelled `chosen` for a question whose answer is 15.
GIBBERISH = ("Discount discount the the price 15% of shoes shoes shoes cost cost $ each each and the the store "
             "Jenny Jenny buys buys pair pair of of shoes at at 15% off off off")


@pytest.mark.parametrize("text", [
    GIBBERISH,
    "blorp 15% glarb zzkx qqq wibble",
    "Let me think. The shop sells 15% of its stock on Monday, and",  # cut off mid-sentence, no result stated
    "So so so so the 15",  # degenerate repetition even with a cue
])
def test_fallback_never_reads_a_number_inside_garbage(text):
    assert extract_answer(text, last_number_fallback=True) is None
    batch = ScoreBatch(prompts=[PROMPT], responses=[text], references=["#### 15"])
    assert MathVerifier(VerifierConfig(last_number_fallback=True)).score(batch).errors == ["no_answer"]


@pytest.mark.parametrize(("text", "value"), [
    ("She pays 20 - 5 = 15 dollars.", 15),
    ("The shoes cost $20 and the discount is $5.\nTherefore, she pays $15 in total.", 15),
    ("Altogether they have 15 marbles.", 15),
    ("15", 15),
    ("$15.", 15),
])
def test_fallback_reads_a_final_sentence_that_states_the_result(text, value):
    assert extract_answer(text, last_number_fallback=True) == value


def test_last_number_fallback_config():
    loose = MathVerifier(VerifierConfig(last_number_fallback=True))
    batch = ScoreBatch(prompts=[PROMPT] * 2, responses=["so it is 7", "so it is 8"], references=["#### 7"] * 2)
    result = loose.score(batch)
    assert result.values == [1.0, 0.0] and result.errors == [None, None]
    assert MathVerifier().score(batch).errors == ["no_answer", "no_answer"]
    assert loose.identity() == {"scorer": "verifier", "type": "verifier", "last_number_fallback": True}


def test_make_scorer_and_config_validation():
    assert isinstance(make_scorer(VerifierConfig()), MathVerifier)
    with pytest.raises(ValueError):
        VerifierConfig(fallback=True)


@pytest.mark.realdata
def test_agrees_with_gsm8k_model_solution_labels(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k_model_solutions_300.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 300
    responses, references, labels, where = [], [], [], []
    for row in rows:
        for name in MODEL_FIELDS:
            responses.append(row[name]["solution"])
            references.append(row["ground_truth"])
            labels.append(row[name]["is_correct"])
            where.append((row["id"], name))
    result = score(responses, references)
    assert "unparseable_reference" not in result.errors and "no_reference" not in result.errors
    verdicts = [v == 1.0 for v in result.values]
    disagree = [w for w, v, label in zip(where, verdicts, labels) if v != label]
    rate = 1 - len(disagree) / len(labels)
    assert rate >= 0.97, f"verifier agrees with is_correct on {rate:.2%} of {len(labels)} solutions; first disagreements: {disagree[:10]}"
    # Both outcomes occur, so the agreement is not a constant guess.
    assert 0 < sum(verdicts) < len(verdicts)
    assert result.error_counts().get("no_answer", 0) <= len(labels) * 0.01


@pytest.mark.realdata
def test_gsm8k_test_references_parse(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k_test_300.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        final = row["answer"].rsplit("####", 1)[1].strip()
        assert extract_answer(row["answer"]) == parse_number(final) is not None, row["id"]
    # A reference scored against its own final line is correct.
    result = score([f"The answer is {r['answer'].rsplit('####', 1)[1].strip()}." for r in rows], [r["answer"] for r in rows])
    assert result.values == [1.0] * len(rows)


@pytest.mark.parametrize("text", [r"so \boxed{\frac{3}{4}}", r"The answer is \dfrac{3}{4}.", r"\boxed{\tfrac{6}{8}}"])
def test_latex_fractions_are_read(text):
    assert extract_answer(text) == Fraction(3, 4)
