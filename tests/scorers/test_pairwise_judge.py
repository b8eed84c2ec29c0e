"""Pairwise A/B judge: both orders, un-swapped. A constant-"A" judge yields no consistent verdict
(not 100% for one side); with a real engine the reconciled verdict equals a hand computation
from teacher-forced label probabilities, and swapping chosen/rejected negates d exactly."""

from __future__ import annotations

import math

import pytest

from prefdata.engines import ChatFormatter, Completion
from prefdata.engines.embedded import resolve_model
from prefdata.scorers import PairBatch, PairwiseJudge, PairwiseJudgeConfig, make_scorer
from prefdata.scorers.pairwise_judge import LABELS, VERDICT_PREFIX, label_token_ids, logit

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
GOOD, BAD = "The capital of France is Paris.", "I like turtles."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(None))


class ConstantJudge:
    """Orchestration-only stand-in: puts `p_first` on label A and the rest on B, whatever it is shown."""

    max_model_len = 8192

    def __init__(self, tokenizer, p_first=0.9, labels_in_top=True):
        self.tokenizer, self.p_first, self.labels_in_top = tokenizer, p_first, labels_in_top
        self.a, self.b = label_token_ids(ChatFormatter(tokenizer), VERDICT_PREFIX, LABELS)
        self.calls = 0

    def check_lengths(self, sequences, extra=0):
        pass

    def generate(self, prompts, params):
        self.calls += 1
        if self.labels_in_top:
            top = {self.a: math.log(self.p_first), self.b: math.log(1 - self.p_first), 7: math.log(1e-9)}
        else:  # the judge answered something else entirely: no verdict can be read
            top = {7: math.log(0.6), 8: math.log(0.3)}
        return [[Completion(text="", token_ids=(next(iter(top)),), logprobs=(0.0,), finish_reason="length",
                            top_logprobs=(top,))] for _ in prompts]


def _pairs(n=4):
    return PairBatch([PROMPT] * n, [GOOD, BAD, "Paris.", "Lyon."][:n], [BAD, GOOD, "Lyon.", "Paris."][:n])


def test_constant_a_judge_gives_no_consistent_verdict(tokenizer):
    engine = ConstantJudge(tokenizer)
    result = PairwiseJudge(PairwiseJudgeConfig(reconcile="consistent"), engine=engine).score_pairs(_pairs())
    assert result.margins == [None] * 4
    assert result.errors == ["position_inconsistent"] * 4
    assert result.counters["position_consistency__num"] == 0 and result.counters["position_consistency__den"] == 4
    assert result.counters["first_position_won__num"] == result.counters["first_position_won__den"] == 8
    assert result.extra["verdict_ab"] == ["chosen"] * 4 and result.extra["verdict_ba"] == ["rejected"] * 4
    assert engine.calls == 1  # both orders of every pair in one engine call


def test_constant_a_judge_averages_to_no_preference(tokenizer):
    result = PairwiseJudge(PairwiseJudgeConfig(reconcile="average"), engine=ConstantJudge(tokenizer)).score_pairs(_pairs())
    assert result.margins == pytest.approx([0.0] * 4, abs=1e-12)  # not +logit(0.9) for "chosen" every time
    assert result.extra["p_chosen_ab"] == pytest.approx([0.9] * 4) and result.extra["p_chosen_ba"] == pytest.approx([0.1] * 4)
    assert result.chosen == [None] * 4 and result.rejected == [None] * 4  # pairwise: no per-side scores


def test_unreadable_verdict_is_null_never_a_random_label(tokenizer):
    engine = ConstantJudge(tokenizer, labels_in_top=False)
    for reconcile in ("average", "consistent"):
        result = PairwiseJudge(PairwiseJudgeConfig(reconcile=reconcile), engine=engine).score_pairs(_pairs())
        assert result.margins == [None] * 4 and result.errors == ["no_score_tokens"] * 4


def test_empty_and_too_long_pairs_are_null(tokenizer):
    engine = ConstantJudge(tokenizer)
    engine.max_model_len = 300
    from prefdata.engines.base import Engine

    engine.check_lengths = lambda seqs, extra=0: Engine.check_lengths(engine, seqs, extra)
    batch = PairBatch([PROMPT] * 3, [GOOD, "  ", "word " * 400], [BAD, BAD, BAD])
    result = PairwiseJudge(engine=engine).score_pairs(batch)
    assert result.errors == [None, "empty_response", "truncated"]
    assert result.margins[0] is not None and result.margins[1:] == [None, None]


def test_pairwise_judge_cannot_score_single_responses():
    with pytest.raises(ValueError, match="compares two responses"):
        make_scorer(PairwiseJudgeConfig())


def test_real_engine_unswaps_both_orders(hf_engine):
    formatter = ChatFormatter(hf_engine.tokenizer)
    labels = label_token_ids(formatter, VERDICT_PREFIX, LABELS)
    batch = PairBatch([PROMPT, PROMPT], [GOOD, BAD], [BAD, GOOD])
    judge = PairwiseJudge(PairwiseJudgeConfig(reconcile="average"), engine=hf_engine)
    # By hand: P(A), P(B) by teacher forcing each label token after each order's judge prompt.
    orders = [judge.judge_messages(PROMPT, a, b) for a, b in ((GOOD, BAD), (BAD, GOOD))]
    ids = [formatter.prompt_ids(m, assistant_prefix=VERDICT_PREFIX) for m in orders]
    logps = hf_engine.score([ids[0], ids[0], ids[1], ids[1]], [[labels[0]], [labels[1]]] * 2)
    (a_gb, b_gb), (a_bg, b_bg) = [[math.exp(float(lp[0])) for lp in logps[k:k + 2]] for k in (0, 2)]
    p_good_first, p_good_second = a_gb / (a_gb + b_gb), b_bg / (a_bg + b_bg)  # P(GOOD better), each order
    expected_p = [(p_good_first, p_good_second), (1 - p_good_second, 1 - p_good_first)]  # pair 2 is pair 1 swapped

    average = judge.score_pairs(batch)
    consistent = PairwiseJudge(PairwiseJudgeConfig(reconcile="consistent"), engine=hf_engine).score_pairs(batch)
    for i, (p_ab, p_ba) in enumerate(expected_p):
        assert average.extra["p_chosen_ab"][i] == pytest.approx(p_ab, abs=1e-4)
        assert average.extra["p_chosen_ba"][i] == pytest.approx(p_ba, abs=1e-4)
        assert average.margins[i] == pytest.approx(logit((p_ab + p_ba) / 2), abs=1e-3)
        if (p_ab > 0.5) == (p_ba > 0.5):
            assert consistent.margins[i] == pytest.approx((logit(p_ab) + logit(p_ba)) / 2, abs=1e-3)
        else:
            assert consistent.margins[i] is None and consistent.errors[i] == "position_inconsistent"
    assert average.margins[1] == pytest.approx(-average.margins[0], abs=1e-6)  # swapping the pair negates d
    assert average.counters["position_consistency__den"] == 2
