"""Implicit reward beta * (log pi(y|x) - log ref(y|x)) equals a hand computation from direct forwards."""

from __future__ import annotations

import copy

import pytest

from prefdata.engines import ChatFormatter, EngineConfig
from prefdata.scorers import ImplicitReward, ImplicitRewardConfig, ScoreBatch

PROMPTS = [[{"role": "user", "content": "Give me one tip for sleeping better."}],
           [{"role": "user", "content": "What is 2 + 2?"}]]
RESPONSES = ["Keep a regular bedtime and avoid screens before sleep.", "4"]


@pytest.fixture(scope="module")
def reference_engine(hf_engine):
    """A second model: the embedded SmolLM2 with its weights perturbed (a stand-in 'reference')."""
    import torch

    from prefdata.engines.transformers_engine import TransformersEngine

    model = copy.deepcopy(hf_engine.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    engine = TransformersEngine(EngineConfig(backend="transformers", dtype="float32"), model=model,
                                tokenizer=hf_engine.tokenizer)
    yield engine
    engine.close()


def _logp_by_hand(model, prompt_ids, response_ids):
    import torch

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = len(prompt_ids)
    return sum(float(logps[start - 1 + t, token]) for t, token in enumerate(response_ids))


def test_implicit_reward_matches_hand_computation(hf_engine, reference_engine):
    beta = 0.5
    formatter = ChatFormatter(hf_engine.tokenizer)
    by_hand = []  # (sum log pi, sum log ref, response tokens) from direct forwards
    for prompt, response in zip(PROMPTS, RESPONSES):
        prompt_ids, response_ids = formatter.split_response(prompt, [{"role": "assistant", "content": response}])
        assert formatter.decode(response_ids).strip().startswith(response)  # the response tokens, end-of-turn included
        by_hand.append((_logp_by_hand(hf_engine.model, prompt_ids, response_ids),
                        _logp_by_hand(reference_engine.model, prompt_ids, response_ids), len(response_ids)))
    for length_normalize in (False, True):
        scorer = ImplicitReward(ImplicitRewardConfig(beta=beta, length_normalize=length_normalize),
                                policy=hf_engine, reference=reference_engine)
        result = scorer.score(ScoreBatch(PROMPTS, RESPONSES))
        assert result.errors == [None, None]
        for value, (pi, ref, n_tokens) in zip(result.values, by_hand):
            expected = beta * (pi - ref) / (n_tokens if length_normalize else 1)
            assert value == pytest.approx(expected, abs=1e-4)
            assert abs(value) > 1e-3  # the two models differ, so the reward is not trivially zero


def test_same_model_gives_zero_and_bad_inputs_are_null(hf_engine):
    scorer = ImplicitReward(policy=hf_engine, reference=hf_engine)
    result = scorer.score(ScoreBatch(PROMPTS + PROMPTS[:1] * 2, RESPONSES + ["  ", "word " * 3000]))
    assert result.values[:2] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert result.values[2:] == [None, None] and result.errors[2:] == ["empty_response", "truncated"]
