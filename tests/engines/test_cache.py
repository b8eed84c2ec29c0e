"""The request cache: the same request gives the same result from the store as from the engine."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from prefdata.engines import SamplingParams
from prefdata.engines.cache import CachedEngine, RequestStore, decode_completions, encode_completions


@pytest.fixture(scope="module")
def prompts(chat_formatter):
    return [chat_formatter.prompt_ids([{"role": "user", "content": text}])
            for text in ("Name a colour.", "Count to three.", "Name a colour.")]  # a duplicate prompt stays distinct


def _count_calls(engine: CachedEngine, inner) -> list[list]:
    """Put a recorder between `engine` and `inner`: the list gets the prompts of every `generate` call."""
    calls: list[list] = []
    engine.inner = type("Counting", (), {"generate": lambda self, p, q: calls.append(list(p)) or inner.generate(p, q),
                                         "identity": inner.identity})()
    return calls


def test_cached_generations_equal_fresh_ones_and_are_served_from_the_store(hf_engine, prompts, tmp_path):
    params = [SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=s, top_logprobs=2) for s in (1, 2, 3)]
    fresh = CachedEngine(hf_engine, None).generate(prompts, params)
    store = RequestStore(tmp_path / "requests.sqlite")
    first = CachedEngine(hf_engine, store).generate(prompts, params)
    assert first == fresh and store.counts["misses"] == 3 and store.counts["writes"] == 3
    store.close()
    reopened = RequestStore(tmp_path / "requests.sqlite")  # as a resumed process would
    engine = CachedEngine(hf_engine, reopened)
    calls = _count_calls(engine, hf_engine)
    assert engine.generate(prompts, params) == fresh
    assert calls == [] and reopened.counts["hits"] == 3
    # another seed is another request
    other = engine.generate(prompts[:1], SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=99))
    assert len(calls) == 1 and other[0] != fresh[0]


def test_a_call_with_any_uncached_request_goes_to_the_engine_whole(hf_engine, prompts, tmp_path):
    """A request cached by an earlier call must not shrink the batch the others run in: the engine
    sees the call the cache-off build sends, and the results equal the cache-off ones."""
    params = [SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=s, top_logprobs=2) for s in (1, 2, 3)]
    store = RequestStore(tmp_path / "requests.sqlite")
    engine = CachedEngine(hf_engine, store)
    calls = _count_calls(engine, hf_engine)
    engine.generate(prompts[:1], params[:1])  # an earlier call caches request 0
    whole = engine.generate(prompts, params)  # request 0 cached, 1 and 2 not
    assert calls[-1] == [list(p) for p in prompts]  # all three went to the engine, in order
    assert whole == CachedEngine(hf_engine, None).generate(prompts, params)  # = the cache-off call
    assert store.counts["hits"] == 0 and store.counts["misses"] == 1 + 3
    assert engine.generate(prompts, params) == whole and len(calls) == 2  # now whole in the store: no engine call
    assert store.counts["hits"] == 3


def test_unseeded_samples_are_not_cached(hf_engine, prompts, tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    CachedEngine(hf_engine, store).generate(prompts[:1], SamplingParams(temperature=1.0, max_tokens=3))
    assert store.counts["writes"] == 0
    CachedEngine(hf_engine, store).generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=3))
    assert store.counts["writes"] == 1  # greedy is reproducible without a seed


def test_cached_scores_are_bit_identical(hf_engine, prompts, tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    targets = [[42, 43, 44], [7], [42, 43, 44]]
    first = CachedEngine(hf_engine, store).score(prompts, targets)
    again = CachedEngine(hf_engine, store).score(prompts, targets)
    assert store.counts["hits"] == 2  # prompts 0 and 2 with the same target are one request
    for a, b in zip(first, again):
        assert a.dtype == b.dtype == np.float64 and a.tobytes() == b.tobytes()


def test_chunks_are_committed_one_by_one(hf_engine, prompts, tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    engine = CachedEngine(hf_engine, store, chunk=1)
    engine.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=2))
    assert store.counts["writes"] == 2 and store.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2


def test_store_respects_its_size_cap(tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite", max_bytes=1000)
    for i in range(10):
        store.put_many({f"k{i}": bytes(300)})
    assert store.size() <= 1000 and store.counts["evicted"] >= 7
    assert store.get_many(["k9"]) == {"k9": bytes(300)}  # the newest entries stay
    assert store.get_many(["k0"]) == {}


def test_completion_encoding_round_trips_floats_exactly():
    from prefdata.engines.base import Completion

    c = Completion("hi", (1, 2), (-0.1 / 3, -1e-300), "stop", ({5: -0.2 / 7}, {6: -3.0}))
    assert decode_completions(encode_completions([c])) == [c]


def test_hidden_state_sums_use_the_engine_and_are_cached(hf_engine, prompts, tmp_path):
    spans = [(1, 4), (0, 2), (2, 2)]
    direct = hf_engine.hidden_state_sums(prompts, spans)
    store = RequestStore(tmp_path / "requests.sqlite")
    first = CachedEngine(hf_engine, store).hidden_state_sums(prompts, spans)
    again = CachedEngine(hf_engine, store).hidden_state_sums(prompts, spans)
    assert first.shape == direct.shape and np.allclose(first, direct, atol=1e-6)
    assert first.tobytes() == again.tobytes() and store.counts["hits"] == 3
    assert not again[2].any()  # an empty span sums to zeros


def test_engine_of_unknown_identity_is_never_cached(hf_engine, prompts, tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    engine = CachedEngine(hf_engine, store, identity=None)  # what Engine.identity() returns when it cannot tell
    engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2))
    engine.score(prompts[:1], [[42]])
    assert sum(store.counts.values()) == 0 and not (tmp_path / "requests.sqlite").exists()


def test_request_key_follows_the_engine_identity(hf_engine, prompts, tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    params = SamplingParams(temperature=0.0, max_tokens=2)
    CachedEngine(hf_engine, store).generate(prompts[:1], params)
    CachedEngine(hf_engine, store, identity={**hf_engine.identity(), "model": {"folder": "retrained"}}).generate(prompts[:1], params)
    assert store.counts["hits"] == 0 and store.counts["misses"] == 2
    CachedEngine(hf_engine, store).generate(prompts[:1], params)
    assert store.counts["hits"] == 1


def test_a_build_with_the_cache_off_writes_no_request_cache(hf_engine, tmp_path):
    """`[output] cache = false` and `run_build(cache=False)` (the CLI's --no-cache) keep no
    `.prefdata/requests.sqlite`; the same build with the cache on (the default) writes one."""
    from prefdata.builder import run_build
    from prefdata.pipeline.checkpoint import REQUEST_CACHE_FILE

    src = tmp_path / "pair.jsonl"
    src.write_text('{"id": "p0", "prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}\n')

    def build(name, flag=None, **output):
        recipe = {"name": name, "source": {"path": str(src), "kind": "pairs"},
                  "engines": {"policy": {"backend": "transformers", "dtype": "float32"}},
                  "stages": [{"type": "reference_logps"}], "output": {"dir": str(tmp_path / name), **output}}
        return run_build(recipe, engines={"policy": hf_engine}, cache=flag)

    on = build("on")
    assert (on.out_dir / REQUEST_CACHE_FILE).is_file() and on.stats["request_cache"]["writes"] > 0
    for off in (build("recipe_off", cache=False), build("flag_off", flag=False)):
        assert not (off.out_dir / REQUEST_CACHE_FILE).exists() and off.stats["request_cache"] is None
        assert pq.read_table(off.out_dir / "data").to_pylist() == pq.read_table(on.out_dir / "data").to_pylist()
