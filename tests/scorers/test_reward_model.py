"""Reward-model scorer on a tiny locally created AutoModelForSequenceClassification folder, loaded
through the real loading code: batched scores equal unbatched ones with left or right padding."""

from __future__ import annotations

import pytest

from prefdata.scorers import RewardModelConfig, RewardModelScorer, ScoreBatch

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hi."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours of the rainbow."}],
]
RESPONSES = ["The capital of France is Paris, a city on the Seine.", "Hi!", "Red, orange and yellow."]


def _scorer(folder, **overrides):
    return RewardModelScorer(RewardModelConfig(model=str(folder), **overrides))


def _hand_scores(folder):
    """Each input alone: one unpadded forward of the chat-templated conversation, head logit 0."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        text = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out.append(float(model(input_ids=ids).logits[0, 0]))
    return out


def test_batched_scores_equal_unbatched_with_either_padding(rm_folder):
    batch = ScoreBatch(PROMPTS, RESPONSES)
    expected = _hand_scores(rm_folder)
    assert len({round(v, 4) for v in expected}) == 3  # distinct inputs, distinct rewards
    for side in ("right", "left"):
        result = _scorer(rm_folder, padding_side=side, batch_size=3).score(batch)
        assert result.errors == [None] * 3
        assert result.values == pytest.approx(expected, abs=1e-5), side
    alone = _scorer(rm_folder, batch_size=1).score(batch)
    assert alone.values == pytest.approx(expected, abs=1e-5)


def test_the_input_is_the_chat_templated_conversation(rm_folder):
    scorer = _scorer(rm_folder)
    scorer.setup(None)
    ids = scorer.encode(PROMPTS[0], RESPONSES[0])
    conversation = [*PROMPTS[0], {"role": "assistant", "content": RESPONSES[0]}]
    expected = scorer.tokenizer.apply_chat_template(conversation, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert ids == list(expected)
    assert "<|im_start|>assistant" in scorer.tokenizer.decode(ids)


def test_too_long_and_empty_responses_are_null(rm_folder):
    result = _scorer(rm_folder, max_length=64).score(ScoreBatch(PROMPTS, [RESPONSES[0], "   ", "word " * 200]))
    assert result.values[0] is not None
    assert result.values[1:] == [None, None] and result.errors[1:] == ["empty_response", "truncated"]


def test_config_is_safe_by_default():
    config = RewardModelConfig(model="some/rm")
    assert config.trust_remote_code is False
    scorer = RewardModelScorer(config)  # building does not load (the dataset card builds stages)
    assert scorer.model is None
