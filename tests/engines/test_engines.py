"""Both engines on the embedded model: same structure, order by position, scores and hidden
states equal to a direct transformers forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefdata.engines import ContextLengthError, SamplingParams

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name one colour of the rainbow."}],
    [{"role": "user", "content": "What is 2+2?"}],  # duplicate prompt text: must stay its own row
]


@pytest.fixture(params=["transformers", "vllm"])
def engine(request):
    return request.getfixturevalue("hf_engine" if request.param == "transformers" else "vllm_engine")


@pytest.fixture(scope="module")
def direct_model(hf_engine):
    return hf_engine.model  # the same float32 weights, used through a plain forward pass


def test_generate_structure_and_position_order(engine, chat_formatter):
    prompts = [chat_formatter.prompt_ids(c) for c in CHATS]
    # Greedy with a different token budget per request: if results were matched by prompt text,
    # the two identical prompts would swap or merge their budgets.
    params = [SamplingParams(n=2, temperature=0.0, max_tokens=m, seed=1, top_logprobs=3) for m in (3, 5, 7)]
    results = engine.generate(prompts, params)
    assert [len(r) for r in results] == [2, 2, 2]
    for completions, budget in zip(results, (3, 5, 7)):
        for c in completions:
            assert isinstance(c.text, str)
            assert 1 <= len(c.token_ids) <= budget
            assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in {"stop", "length"}
            assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
            for token, lp, top in zip(c.token_ids, c.logprobs, c.top_logprobs):
                assert len(top) == 3
                assert token in top and top[token] == pytest.approx(lp, abs=1e-4)  # greedy = top-1
    assert len(results[0][0].token_ids) == 3 and len(results[2][0].token_ids) == 7
    assert results[2][0].token_ids[:3] == results[0][0].token_ids


def test_greedy_generation_agrees_across_engines(hf_engine, vllm_engine, chat_formatter):
    prompts = [chat_formatter.prompt_ids(c) for c in CHATS[:2]]
    params = SamplingParams(temperature=0.0, max_tokens=12)
    hf = hf_engine.generate(prompts, params)
    vl = vllm_engine.generate(prompts, params)
    for a, b in zip(hf, vl):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].text == b[0].text
        np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=2e-3)


def test_seeded_samples_reproduce_and_differ_within_n(engine, chat_formatter):
    prompt = [chat_formatter.prompt_ids(CHATS[1])]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=24, seed=1234)
    first = engine.generate(prompt, params)[0]
    again = engine.generate(prompt, params)[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    # vLLM gives n identical samples for one seeded request with n > 1; prefdata derives a seed per sample.
    assert len({c.token_ids for c in first}) == 3


def test_stop_strings_end_the_text(engine, chat_formatter):
    prompt = [chat_formatter.prompt_ids([{"role": "user", "content": "Count from 1 to 20, separated by commas."}])]
    out = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=40, stop=("5",)))[0][0]
    assert "5" not in out.text
    assert out.finish_reason == "stop"


def _direct_logprobs(model, prompt_ids, response_ids):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    start = len(prompt_ids)
    return np.array([lp[start - 1 + i, t].item() for i, t in enumerate(response_ids)])


def test_score_equals_direct_forward(engine, direct_model, chat_formatter):
    responses = ["2 + 2 equals 4.", "Blue is one of the colours of the rainbow, between green and indigo."]
    pairs = [chat_formatter.split_response(c, [{"role": "assistant", "content": r}]) for c, r in zip(CHATS[:2], responses)]
    scores = engine.score([p for p, _ in pairs], [r for _, r in pairs])
    for (prompt, response), got in zip(pairs, scores):
        expected = _direct_logprobs(direct_model, prompt, response)
        assert got.shape == (len(response),)
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert got.sum() == pytest.approx(expected.sum(), abs=5e-3)


def test_hidden_states_equal_direct_forward(engine, direct_model, chat_formatter):
    sequences = [chat_formatter.prompt_ids(c) for c in CHATS[:2]]
    sequences[1] = sequences[1] + [28, 29, 30]  # different lengths in one batch
    states = engine.hidden_states(sequences)
    for seq, got in zip(sequences, states):
        with torch.inference_mode():
            expected = direct_model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0].float().numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)


def test_context_length_is_enforced(engine):
    too_long = [[1] * (engine.max_model_len + 5)]
    with pytest.raises(ContextLengthError):
        engine.generate(too_long, SamplingParams(max_tokens=2))
    with pytest.raises(ContextLengthError):
        engine.score(too_long, [[2]])


def test_hidden_state_sums_equal_direct_forward(engine, direct_model, chat_formatter):
    sequences = [chat_formatter.prompt_ids(c) for c in CHATS[:3]]
    spans = [(0, len(sequences[0])), (2, 5), (len(sequences[2]) - 1, len(sequences[2]))]
    sums = engine.hidden_state_sums(sequences, spans)
    assert sums.shape == (3, direct_model.config.hidden_size) and sums.dtype == np.float64
    for seq, (a, b), got in zip(sequences, spans, sums):
        with torch.inference_mode():
            states = direct_model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0].double()
        np.testing.assert_allclose(got, states[a:b].sum(0).numpy(), rtol=1e-3, atol=2e-3 * (b - a))
    with pytest.raises(ValueError, match="outside"):
        engine.hidden_state_sums(sequences[:1], [(0, len(sequences[0]) + 1)])


def test_left_padding_gives_the_same_scores_and_states(hf_engine, chat_formatter):
    from prefdata.engines import EngineConfig
    from prefdata.engines.transformers_engine import TransformersEngine

    left = TransformersEngine(EngineConfig(backend="transformers", dtype="float32", padding_side="left",
                                           forward_batch_size=8),
                              model=hf_engine.model, tokenizer=hf_engine.tokenizer)
    prompts = [chat_formatter.prompt_ids(c) for c in CHATS[:3]]
    targets = [[28, 29, 30], [31], [32, 33, 34, 35, 36, 37]]  # mixed lengths: real left padding
    for got, expected in zip(left.score(prompts, targets), hf_engine.score(prompts, targets)):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    for got, expected in zip(left.hidden_states(prompts), hf_engine.hidden_states(prompts)):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_cpu_forward_passes_give_each_sequence_the_numbers_it_gets_alone(hf_engine, chat_formatter):
    """One sequence per teacher-forced pass on a CPU: a row's score and hidden-state sums are
    bit-identical whatever else is in the call, so curation does not depend on the shard layout."""
    assert hf_engine.config.forward_batch_size == 1 and hf_engine.identity()["config"]["forward_batch_size"] == 1
    prompts = [chat_formatter.prompt_ids(c) for c in CHATS]
    targets = [[28, 29, 30], [31], [32, 33, 34, 35, 36, 37]]
    together = hf_engine.score(prompts, targets)
    sequences = [p + t for p, t in zip(prompts, targets)]
    spans = [(len(p), len(s)) for p, s in zip(prompts, sequences)]
    sums = hf_engine.hidden_state_sums(sequences, spans)
    for i in range(len(prompts)):
        assert np.array_equal(hf_engine.score([prompts[i]], [targets[i]])[0], together[i])
        assert np.array_equal(hf_engine.hidden_state_sums([sequences[i]], [spans[i]])[0], sums[i])


def test_transformers_seeded_request_samples_the_same_tokens_whatever_its_batch(hf_engine, chat_formatter):
    """README: each request draws from its own generator, so a seeded request's samples do not
    depend on what else is decoded with it (here: alone, then left-padded among longer prompts)."""
    target = chat_formatter.prompt_ids(CHATS[0])
    others = [chat_formatter.prompt_ids([{"role": "user", "content": text}]) for text in (
        "Write a story about a dragon who learns to bake bread in a mountain village.", "List three primes.")]
    assert len({len(p) for p in [target, *others]}) == 3 and max(map(len, others)) > len(target)  # target padded
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=21)
    alone = hf_engine.generate([target], params)[0]
    batched = hf_engine.generate([others[0], target, others[1]],
                                 [SamplingParams(temperature=1.0, max_tokens=8, seed=5), params,
                                  SamplingParams(temperature=1.0, max_tokens=8, seed=9)])
    assert hf_engine.config.batch_size >= 4  # all 4 samples share one decode batch
    assert [c.token_ids for c in batched[1]] == [c.token_ids for c in alone]
    assert len({c.token_ids for c in alone}) == 2  # sampled (two derived seeds, two answers), not greedy
