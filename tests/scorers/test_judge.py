"""Pointwise judge: the expected rating read from log-probs equals a brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefdata.engines import ChatFormatter, Completion
from prefdata.scorers import JudgeConfig, PointwiseJudge, ScoreBatch
from prefdata.scorers.judge import RATING_PREFIX, RatingReader

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
RESPONSES = ["The capital of France is Paris.", "I like turtles."]


def _brute_force_probs(engine, formatter, prompt_ids):
    """P(rating k) for k in 1..10 by teacher forcing each label's tokens (no top-k cut)."""
    reader = RatingReader(formatter, range(1, 11), RATING_PREFIX)
    probe = [{"role": "user", "content": "x"}]
    base = formatter.prompt_ids(probe, assistant_prefix=RATING_PREFIX)
    paths = {k: formatter.prompt_ids(probe, assistant_prefix=f"{RATING_PREFIX} {k}")[len(base):] for k in range(1, 11)}
    label_logps = engine.score([prompt_ids] * 10, [paths[k] for k in range(1, 11)])
    continuations = []  # (label, token) for labels that prefix a longer label ("1" -> "10")
    for k, path in paths.items():
        node = reader.root
        for token in path:
            node = node.children[token]
        continuations += [(k, t) for t in node.children]
    cont_logps = engine.score([prompt_ids + paths[k] for k, _ in continuations], [[t] for _, t in continuations])
    stop = {k: 1.0 for k in paths}
    for (k, _), lp in zip(continuations, cont_logps):
        stop[k] -= math.exp(float(lp[0]))
    return {k: math.exp(float(lp.sum())) * stop[k] for k, lp in zip(range(1, 11), label_logps)}


@pytest.mark.parametrize("engine_name", ["hf_engine", "vllm_engine"])
def test_expected_rating_matches_brute_force(engine_name, request):
    engine = request.getfixturevalue(engine_name)
    judge = PointwiseJudge(JudgeConfig(), engine=engine)
    formatter = ChatFormatter(engine.tokenizer)
    result = judge.score(ScoreBatch(prompts=[PROMPT] * 2, responses=RESPONSES))
    assert result.errors == [None, None]
    for response, value, mass in zip(RESPONSES, result.values, result.extra["judge_mass"]):
        ids = formatter.prompt_ids(judge.judge_messages(PROMPT, response), assistant_prefix=RATING_PREFIX)
        probs = _brute_force_probs(engine, formatter, ids)
        total = sum(probs.values())
        assert mass == pytest.approx(total, abs=2e-3)
        assert value == pytest.approx(sum(k * p for k, p in probs.items()) / total, abs=2e-2)
        assert 1.0 <= value <= 10.0


def test_engines_agree_on_ratings(hf_engine, vllm_engine):
    batch = ScoreBatch(prompts=[PROMPT] * 2, responses=RESPONSES)
    a = PointwiseJudge(engine=hf_engine).score(batch).values
    b = PointwiseJudge(engine=vllm_engine).score(batch).values
    np.testing.assert_allclose(a, b, atol=2e-2)


def test_empty_and_too_long_responses_are_null_with_codes(hf_engine):
    judge = PointwiseJudge(engine=hf_engine)
    result = judge.score(ScoreBatch(prompts=[PROMPT] * 2, responses=["  ", "word " * 3000]))
    assert result.values == [None, None]
    assert result.errors == ["empty_response", "truncated"]
    assert result.error_counts() == {"empty_response": 1, "truncated": 1}


class _ScriptedEngine:
    """Orchestration-only stand-in: returns fixed verdict texts (tests the text-mode parser)."""

    max_model_len = 4096

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts = tokenizer, texts

    def check_lengths(self, sequences, extra=0):
        pass

    def generate(self, prompts, params):
        return [[Completion(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop")] for t in self.texts]


def test_text_mode_parses_or_nulls_never_guesses(hf_engine):
    engine = _ScriptedEngine(hf_engine.tokenizer, ["8", "I would say 10/10", "no idea", "Rating: 0 or 11"])
    judge = PointwiseJudge(JudgeConfig(mode="text"), engine=engine)
    result = judge.score(ScoreBatch(prompts=[PROMPT] * 4, responses=["a", "b", "c", "d"]))
    assert result.values == [8.0, 10.0, None, None]
    assert result.errors[2:] == ["unparseable_verdict", "unparseable_verdict"]


def test_low_rating_mass_gives_null(hf_engine):
    judge = PointwiseJudge(JudgeConfig(min_mass=1.0), engine=hf_engine)  # no model puts all mass on digits
    result = judge.score(ScoreBatch(prompts=[PROMPT], responses=RESPONSES[:1]))
    assert result.values == [None] and result.errors == ["no_score_tokens"]
