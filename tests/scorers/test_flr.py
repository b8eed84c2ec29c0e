"""FLR: the score equals a hand computation of mean follow-up log-likelihoods from a direct forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from prefdata.engines.embedded import resolve_model
from prefdata.scorers import FLRConfig, FLRScorer, ScoreBatch, ScorerConfig
from prefdata.scorers.flr import FOLLOW_UPS
from prefdata.types import FLRCategory, ScoreError

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
RESPONSES = ["The capital of France is Paris.", "I like turtles."]
# Two per side keeps the forward passes few; the default set is checked separately.
CONFIG = FLRConfig(positive=("That is correct, thank you.", "Great answer!"),
                   negative=("That is wrong.", "You ignored my question."))


@pytest.fixture(scope="module")
def direct_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _hand_mean_logp(model, tokenizer, chat, follow_up):
    """Mean log p of the follow-up tokens: template text up to the follow-up, then its tokens, one forward."""
    text = tokenizer.apply_chat_template([*chat, {"role": "user", "content": follow_up}], tokenize=False)
    start = text.rfind(follow_up)
    context = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
    target = tokenizer(follow_up, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context + target])).logits[0]
    logps = torch.log_softmax(logits.double(), dim=-1)
    return float(np.mean([logps[len(context) - 1 + t, tok].item() for t, tok in enumerate(target)]))


def _hand_flr(model, tokenizer, response):
    chat = [*PROMPT, {"role": "assistant", "content": response}]
    pos = [_hand_mean_logp(model, tokenizer, chat, f) for f in CONFIG.positive]
    neg = [_hand_mean_logp(model, tokenizer, chat, f) for f in CONFIG.negative]
    return np.mean(pos), np.mean(neg)


def test_flr_equals_hand_computation(hf_engine, direct_model):
    result = FLRScorer(CONFIG, engine=hf_engine).score(ScoreBatch([PROMPT] * 2, RESPONSES))
    assert result.errors == [None, None]
    for i, response in enumerate(RESPONSES):
        pos, neg = _hand_flr(*direct_model, response)
        assert result.extra["flr_positive"][i] == pytest.approx(pos, abs=1e-4)
        assert result.extra["flr_negative"][i] == pytest.approx(neg, abs=1e-4)
        assert result.values[i] == pytest.approx(pos - neg, abs=1e-4)


def test_vllm_agrees_with_transformers(hf_engine, vllm_engine):
    batch = ScoreBatch([PROMPT] * 2, RESPONSES)
    a = FLRScorer(CONFIG, engine=hf_engine).score(batch)
    b = FLRScorer(CONFIG, engine=vllm_engine).score(batch)
    np.testing.assert_allclose(a.extra["flr_positive"], b.extra["flr_positive"], atol=2e-3)
    np.testing.assert_allclose(a.values, b.values, atol=2e-3)


class _CountingEngine:
    """Wraps a real engine and records its `score` calls (orchestration check)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.tokenizer, self.max_model_len = engine.tokenizer, engine.max_model_len

    def check_lengths(self, sequences, extra=0):
        return self.engine.check_lengths(sequences, extra)

    def score(self, prompts, targets):
        self.calls.append(len(prompts))
        return self.engine.score(prompts, targets)


def test_one_engine_call_and_null_codes(hf_engine):
    counting = _CountingEngine(hf_engine)
    long_response = "word " * (hf_engine.max_model_len + 10)
    result = FLRScorer(CONFIG, engine=counting).score(
        ScoreBatch([PROMPT] * 4, [RESPONSES[0], "  ", long_response, RESPONSES[1]]))
    assert counting.calls == [2 * 4]  # 2 scorable responses x 4 follow-ups, one call
    assert result.errors == [None, ScoreError.EMPTY_RESPONSE.value, ScoreError.TRUNCATED.value, None]
    assert result.values[1] is None and result.values[2] is None
    assert result.error_counts() == {"empty_response": 1, "truncated": 1}


def test_follow_up_is_the_next_user_turn_and_only_its_tokens_are_scored(hf_engine):
    from prefdata.engines import ChatFormatter
    from prefdata.scorers.flr import follow_up_tokens

    formatter = ChatFormatter(hf_engine.tokenizer)
    chat = [*PROMPT, {"role": "assistant", "content": RESPONSES[0]}]
    context, target = follow_up_tokens(formatter, chat, "That is wrong.")
    decoded = hf_engine.tokenizer.decode(context)
    assert decoded.endswith(RESPONSES[0] + "<|im_end|>\n<|im_start|>user\n")
    assert hf_engine.tokenizer.decode(target) == "That is wrong."


def test_default_follow_ups_cover_six_categories_with_five_per_side():
    pos, neg = FLRConfig().follow_ups()
    assert set(FOLLOW_UPS) == set(FLRCategory) and len(FLRCategory) == 6
    assert len(pos) >= 5 and len(neg) >= 5 and not set(pos) & set(neg)
    only = FLRConfig(categories=["correctness"]).follow_ups()
    assert only == FOLLOW_UPS[FLRCategory.CORRECTNESS]


def test_config_is_typed_and_in_the_scorer_union():
    from pydantic import TypeAdapter

    parsed = TypeAdapter(ScorerConfig).validate_python({"type": "flr", "categories": ["relevance"]})
    assert isinstance(parsed, FLRConfig)
    with pytest.raises(ValidationError):
        FLRConfig(positive=("only positive",))
    with pytest.raises(ValidationError):
        FLRConfig(categories=["humour"])
    with pytest.raises(ValidationError):
        FLRConfig(temperature=1.0)
