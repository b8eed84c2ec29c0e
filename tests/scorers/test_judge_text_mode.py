"""Judges in text mode, on a served model without log-probs: a real vLLM server (`vllm_server`)
behind a loopback proxy that strips log-probs from its answers (as many hosted APIs give none), so
`auto` picks text mode; the same proxy scripts unreadable answers for the null case."""

from __future__ import annotations

import urllib.parse

import pytest

from prefdata.engines import ChatFormatter, EngineConfig, SamplingParams, has_logprobs, load_engine
from prefdata.engines.openai_engine import EngineCapabilityError
from prefdata.scorers import (
    JudgeConfig,
    PairBatch,
    PairwiseJudge,
    PairwiseJudgeConfig,
    PointwiseJudge,
    ScoreBatch,
)
from prefdata.scorers.judge import TEXT_MAX_TOKENS, parse_rating
from prefdata.scorers.pairwise_judge import parse_verdict

from ..served import Proxy

PROMPTS = [[{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "user", "content": "Give me a word that rhymes with cat."}],
           [{"role": "user", "content": "What is 3 times 4?"}]]
RESPONSES = ["The capital of France is Paris.", "Hat rhymes with cat.", "I like turtles."]
WORSE = ["I don't know.", "Dog.", "3 times 4 is 12."]


def _engine(server, **proxy_options):
    parts = urllib.parse.urlsplit(server.url)
    proxy = Proxy(f"{parts.scheme}://{parts.netloc}", strip_logprobs=True, **proxy_options)
    engine = load_engine(EngineConfig(backend="openai", base_url=proxy.url, model=server.name))
    return proxy, engine


@pytest.fixture(scope="module")
def no_logprobs(vllm_server):
    proxy, engine = _engine(vllm_server)
    yield engine
    engine.close()
    proxy.close()


def test_server_without_logprobs_is_detected(no_logprobs):
    assert not has_logprobs(no_logprobs) and no_logprobs.capabilities["token_id_prompts"]
    with pytest.raises(EngineCapabilityError, match="no prompt log-probs"):
        no_logprobs.score([[1, 2]], [[3]])


def test_pointwise_text_mode_reads_the_ratings_the_model_wrote(no_logprobs):
    judge = PointwiseJudge(JudgeConfig(), engine=no_logprobs)  # mode auto
    assert judge.mode() == "text"
    result = judge.score(ScoreBatch(prompts=PROMPTS, responses=RESPONSES))
    # The same greedy answers, read by hand: the judge's values are exactly what the texts say.
    formatter = ChatFormatter(no_logprobs.tokenizer)
    prompts = [formatter.prompt_ids(judge.judge_messages(p, r, text_mode=True)) for p, r in zip(PROMPTS, RESPONSES)]
    texts = [out[0].text for out in no_logprobs.generate(prompts, SamplingParams(temperature=0.0, max_tokens=TEXT_MAX_TOKENS))]
    expected = [parse_rating(t) for t in texts]
    assert any(v is not None for v in expected), texts  # the strict format works on this model
    assert result.values == [None if v is None else float(v) for v in expected]
    assert result.errors == [None if v is not None else "unparseable_verdict" for v in expected]


def test_pointwise_unparseable_answers_are_null_and_counted(vllm_server):
    proxy, engine = _engine(vllm_server, rewrite_text=lambda text: "It is hard to say; both have merit.")
    try:
        result = PointwiseJudge(JudgeConfig(), engine=engine).score(ScoreBatch(prompts=PROMPTS, responses=RESPONSES))
        assert result.values == [None, None, None]
        assert result.error_counts() == {"unparseable_verdict": 3}
    finally:
        engine.close()
        proxy.close()


def test_pairwise_text_mode_runs_both_orders_and_unswaps(no_logprobs):
    judge = PairwiseJudge(PairwiseJudgeConfig(), engine=no_logprobs)
    assert judge.mode() == "text"
    result = judge.score_pairs(PairBatch(prompts=PROMPTS, chosen=RESPONSES, rejected=WORSE))
    formatter = ChatFormatter(no_logprobs.tokenizer)
    for i, (p, c, r) in enumerate(zip(PROMPTS, RESPONSES, WORSE)):
        orders = [formatter.prompt_ids(judge.judge_messages(p, a, b, text_mode=True)) for a, b in ((c, r), (r, c))]
        ab, ba = (parse_verdict(out[0].text) for out in
                  no_logprobs.generate(orders, SamplingParams(temperature=0.0, max_tokens=16)))
        if ab is None or ba is None:
            assert result.margins[i] is None and result.errors[i] == "unparseable_verdict"
            continue
        vote_ab, vote_ba = (1 if ab == "A" else -1), (1 if ba == "B" else -1)  # B in order BA is chosen
        assert result.margins[i] == (vote_ab + vote_ba) / 2
        assert result.extra["verdict_ab"][i] == ("chosen" if vote_ab > 0 else "rejected")
        assert result.extra["verdict_ba"][i] == ("chosen" if vote_ba > 0 else "rejected")


@pytest.mark.parametrize("answer", ["Better response: A", "**Better response: B**"])
def test_pairwise_text_mode_position_bias_cancels(vllm_server, answer):
    proxy, engine = _engine(vllm_server, rewrite_text=lambda text: answer)
    try:
        for reconcile, margins, errors in (("average", [0.0] * 3, [None] * 3),
                                           ("consistent", [None] * 3, ["position_inconsistent"] * 3)):
            judge = PairwiseJudge(PairwiseJudgeConfig(reconcile=reconcile), engine=engine)
            result = judge.score_pairs(PairBatch(prompts=PROMPTS, chosen=RESPONSES, rejected=WORSE))
            assert result.margins == margins and result.errors == errors
            assert result.counters["position_consistency__num"] == 0
            first = result.counters["first_position_won__num"] / result.counters["first_position_won__den"]
            assert first == (1.0 if answer.endswith("A") else 0.0)
    finally:
        engine.close()
        proxy.close()


def test_pairwise_unparseable_answer_is_null(vllm_server):
    proxy, engine = _engine(vllm_server, rewrite_text=lambda text: "Both responses are fine.")
    try:
        result = PairwiseJudge(PairwiseJudgeConfig(), engine=engine).score_pairs(
            PairBatch(prompts=PROMPTS, chosen=RESPONSES, rejected=WORSE))
        assert result.margins == [None] * 3 and result.errors == ["unparseable_verdict"] * 3
    finally:
        engine.close()
        proxy.close()
