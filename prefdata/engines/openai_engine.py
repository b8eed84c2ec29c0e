"""Served backend: any OpenAI-compatible server (`vllm serve`, SGLang, a hosted API) behind `Engine`.

Prompts stay token ids rendered by prefdata's `ChatFormatter` with the served model's own
tokenizer, and go to `/v1/completions` as lists of ids, so templates are identical to the
in-process engines and results compare token for token. What the wrapper does:

* **Capabilities, probed once** at start on the first server (recorded in `identity()`, hence in
  stats.json and the card): does the server take token-id prompts, return sampled token ids
  (vLLM's `return_tokens_as_token_ids`), teacher-forced prompt log-probs (vLLM's
  `prompt_logprobs`) or `echo` + `logprobs`.
* **Chat-only servers** (hosted chat APIs that take no token ids): prompts go to
  `/chat/completions` as messages. The engine's tokenizer is then a `MessageTokenizer`
  (`prefdata.engines.message_tokens`), whose "token ids" stand for whole chats, so stages still
  render with `ChatFormatter` and the engine gets the messages back. The server applies its own
  template; no log-probs (judges use text mode), no `score`, no pre-filled answer.
* **generate**: one request per sample (`SamplingParams.per_sample`: n > 1 becomes n requests
  with derived seeds, as in the vLLM engine), token ids and raw log-probs of the sampled tokens,
  the top-k alternatives when asked.
* **score**: `prompt_logprobs` on prompt + target (one generated token, discarded), else `echo`
  with `logprobs`; neither: `EngineCapabilityError`.
* **hidden_states**: a server has no hidden states: `EngineCapabilityError` (CHES needs an
  in-process engine).
* **Servers and failures.** Requests run `max_concurrency` per server on a thread pool, spread
  round-robin over `base_url`s; 429, 5xx, timeouts and connection errors are retried (up to
  `retries` times) after `min(30, 0.5 * 2^attempt)` s scaled by a random factor in [0.5, 1.5)
  (jitter), or after the server's `Retry-After` when that is longer, each retry on the next
  server. Any other error stops the build with the server's message. A server that does not
  answer `/v1/models` at start stops the build with one line naming it.
* **Identity** (cache and checkpoint keys, the card) is the served model: its name, what
  `/v1/models` reports (`root`, `parent`), the revision when configured, and the capabilities;
  never the URLs (adding a server to a fleet reuses the cache) nor the key.
* **The key** is read from the variable `api_key_env` names and handed to the client only; it is
  never logged, stored or part of an identity.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from prefdata.engines.base import Completion, Engine, SamplingParams, normalise_params
from prefdata.engines.config import EngineConfig
from prefdata.engines.message_tokens import MessageTokenizer
from prefdata.schemas.errors import PrefdataError
from prefdata.types import EngineBackend

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
TOKEN_PREFIX = "token_id:"


class ServerError(PrefdataError):
    """A served engine that cannot be used (unreachable, refuses requests, wrong model): one line."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a refused request


class EngineCapabilityError(PrefdataError):
    """An operation this engine cannot do (e.g. hidden states from a server)."""


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_PREFIX):
        raise ServerError(f"server returned token {token!r}, not {TOKEN_PREFIX}<id>")
    return int(token[len(TOKEN_PREFIX):])


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: ignored (the exponential backoff applies)


class OpenAIEngine(Engine):
    backend = EngineBackend.OPENAI

    def __init__(self, config: EngineConfig, *, sleep: Callable[[float], None] = time.sleep):
        import openai

        self.config = config
        self.urls = config.base_urls
        self._sleep = sleep
        self._rng = random.Random()  # jitter only; never touches data
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.counters: Counter = Counter()
        api_key = "EMPTY"  # local servers take any key; the client insists on one
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env, "")
            if not api_key:
                raise ServerError(f"environment variable {config.api_key_env} (api_key_env) is not set or empty")
        self._clients = [openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=config.timeout)
                         for url in self.urls]
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency * len(self.urls),
                                        thread_name_prefix="prefdata-openai")
        self.served = self._check_servers()
        self.model_id = self.served["id"]
        self.revision = config.revision
        self.model_path = self.served.get("root") or self.model_id
        server_len = self.served.get("max_model_len")
        self.max_model_len = min(config.max_model_len, server_len) if server_len else config.max_model_len
        tokenizer, tokenizer_error = self._load_tokenizer()
        self.capabilities = self._probe(tokenizer)
        if not self.capabilities["token_id_prompts"]:
            tokenizer = MessageTokenizer()
        elif tokenizer is None:
            raise ServerError(f"cannot load a tokenizer for served model {self.model_id!r} ({tokenizer_error}); "
                              "set tokenizer = '<hub id or folder>' on the engine")
        self.tokenizer = tokenizer

    # -- start ---------------------------------------------------------------------------------
    def _check_servers(self) -> dict[str, Any]:
        """Every server must answer /v1/models and serve the same model; returns its entry."""
        import openai

        entries = []
        for url, client in zip(self.urls, self._clients):
            try:
                models = [m.model_dump() for m in client.models.list().data]
            except openai.APIConnectionError as e:
                raise ServerError(f"server {url} is unreachable ({type(e.__cause__ or e).__name__}); "
                                  "is it running, and is base_url its API root (…/v1)?") from None
            except openai.APIStatusError as e:
                raise ServerError(f"server {url} answered /models with HTTP {e.status_code}: {_short(e)}") from None
            names = [m["id"] for m in models]
            wanted = self.config.model or None
            if wanted is None:
                if len(models) != 1:
                    raise ServerError(f"server {url} serves {names}: set model to one of them")
                entries.append(models[0])
                continue
            match = [m for m in models if m["id"] == wanted]
            if not match:
                raise ServerError(f"server {url} does not serve model {wanted!r}; it serves {names}")
            entries.append(match[0])
        first = entries[0]
        for url, entry in zip(self.urls[1:], entries[1:]):
            if (entry["id"], entry.get("root")) != (first["id"], first.get("root")):
                raise ServerError(f"server {url} serves {entry['id']} ({entry.get('root')}), but {self.urls[0]} serves "
                                  f"{first['id']} ({first.get('root')}): a fleet must serve one model")
        return {k: first.get(k) for k in ("id", "root", "parent", "max_model_len")}

    def _load_tokenizer(self) -> tuple[Any, str]:
        """The served model's tokenizer, or (None, why not)."""
        from transformers import AutoTokenizer

        candidates = [self.config.tokenizer] if self.config.tokenizer else [self.served.get("root"), self.model_id]
        errors = []
        for name in filter(None, candidates):
            try:
                return AutoTokenizer.from_pretrained(name, revision=self.revision,
                                                     trust_remote_code=self.config.trust_remote_code), ""
            except (OSError, ValueError) as e:
                errors.append(f"{name}: {type(e).__name__}")
        return None, "; ".join(errors)

    def _probe(self, tokenizer: Any) -> dict[str, bool]:
        """What the server supports, asked once with a 3-token prompt."""

        ids = [1, 2, 3] if tokenizer is None else list(tokenizer("Hello there", add_special_tokens=False)["input_ids"])[:3]
        base = {"model": self.model_id, "prompt": ids, "max_tokens": 1, "temperature": 0.0}

        def attempt(**kwargs: Any) -> Any:
            extra = kwargs.pop("extra_body", {})
            try:
                return self._call(lambda c: c.completions.create(**base, **kwargs, extra_body=extra), first=0)
            except ServerError as e:
                if e.status in (400, 404, 422):  # this form of request is not supported
                    return None
                raise

        caps = {"token_id_prompts": False, "chat_messages": False, "token_ids_out": False, "logprobs": False,
                "prompt_logprobs": False, "echo": False}
        out = attempt(logprobs=1)
        if out is None:
            try:
                self._call(lambda c: c.chat.completions.create(model=self.model_id, max_tokens=1,
                                                               messages=[{"role": "user", "content": "Hello"}]), first=0)
            except ServerError as e:
                raise ServerError(f"server {self.urls[0]} takes neither token-id prompts on /completions nor chat "
                                  f"messages on /chat/completions: {e}") from None
            caps["chat_messages"] = True
            log.info("served engine %s: chat messages only (capabilities %s)", self.model_id, caps)
            return caps
        caps["token_id_prompts"] = True
        caps["logprobs"] = out.choices[0].logprobs is not None
        out = attempt(logprobs=1, extra_body={"return_tokens_as_token_ids": True})
        if out is not None and out.choices[0].logprobs is not None:
            caps["token_ids_out"] = all(t.startswith(TOKEN_PREFIX) for t in out.choices[0].logprobs.tokens)
        out = attempt(extra_body={"prompt_logprobs": 0})
        if out is not None:
            entries = (out.choices[0].model_extra or {}).get("prompt_logprobs")
            caps["prompt_logprobs"] = isinstance(entries, list) and len(entries) == len(ids)
        if not caps["prompt_logprobs"] and caps["token_ids_out"]:
            out = attempt(echo=True, logprobs=0, extra_body={"return_tokens_as_token_ids": True})
            caps["echo"] = bool(out is not None and out.choices[0].logprobs is not None
                                and len(out.choices[0].logprobs.tokens) >= len(ids))
        log.info("served engine %s: capabilities %s", self.model_id, caps)
        return caps

    # -- requests ------------------------------------------------------------------------------
    def _call(self, request: Callable[[Any], Any], first: int | None = None) -> Any:
        """Run one request, retrying retryable failures with backoff, each retry on the next server."""
        import openai

        server = next(self._next) if first is None else first
        for attempt in range(self.config.retries + 1):
            index = (server + attempt) % len(self._clients)
            try:
                result = request(self._clients[index])
                with self._lock:
                    self.counters[f"requests_server_{index}"] += 1
                return result
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                status = getattr(e, "status_code", None) or type(e).__name__
                if attempt == self.config.retries:
                    raise ServerError(f"server {self.urls[index]}: {status} after {attempt + 1} attempts: {_short(e)}") from None
                delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * (0.5 + self._rng.random())
                wait = max(delay, _retry_after(e) or 0.0)
                with self._lock:
                    self.counters["retries"] += 1
                log.warning("server %s: %s; retry %d/%d in %.2fs", self.urls[index], status, attempt + 1,
                            self.config.retries, wait)
                self._sleep(wait)
            except openai.APIStatusError as e:
                raise ServerError(f"server {self.urls[index]} refused a request (HTTP {e.status_code}): {_short(e)}",
                                  status=e.status_code) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(fn, items))

    # -- operations ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        per_prompt = normalise_params(params, len(prompts))
        jobs = []
        for index, (prompt, p) in enumerate(zip(prompts, per_prompt)):
            self.check_lengths([prompt], extra=1)
            jobs.extend((index, list(map(int, prompt)), sample) for sample in p.per_sample())
        results: list[list[Completion]] = [[] for _ in prompts]
        for (index, _, _), completion in zip(jobs, self._map(self._generate_one, jobs)):
            results[index].append(completion)
        return results

    def _generate_one(self, job: tuple[int, list[int], SamplingParams]) -> Completion:
        _, prompt, p = job
        extra: dict[str, Any] = {}
        if p.top_k:
            extra["top_k"] = p.top_k
        if not self.capabilities["token_id_prompts"]:
            return self._chat_one(prompt, p, extra)
        kwargs = self._sampling_kwargs(p, prompt=prompt)
        if self.capabilities["logprobs"]:
            kwargs["logprobs"] = max(p.top_logprobs, 0)  # 0: the sampled token's log-prob only
            if self.capabilities["token_ids_out"]:
                extra["return_tokens_as_token_ids"] = True
        elif p.top_logprobs:
            raise EngineCapabilityError(f"served model {self.model_id} returns no log-probs; use a judge in text mode")
        out = self._call(lambda c: c.completions.create(**kwargs, extra_body=extra))
        choice = out.choices[0]
        finish = "length" if choice.finish_reason == "length" else "stop"
        lp = choice.logprobs
        if lp is None or not self.capabilities["token_ids_out"]:
            # No ids from the server: the text re-tokenised; no per-token log-probs to align with them.
            ids = tuple(self.tokenizer(choice.text, add_special_tokens=False)["input_ids"])
            return Completion(text=choice.text, token_ids=ids, logprobs=(), finish_reason=finish)
        ids = tuple(_token_id(t) for t in lp.tokens)
        logprobs = tuple(float(x) for x in lp.token_logprobs)
        tops = None
        if p.top_logprobs:
            tops = tuple(dict(sorted(((_token_id(t), float(v)) for t, v in (step or {}).items()),
                                     key=lambda kv: -kv[1])[:p.top_logprobs]) for step in lp.top_logprobs)
        return Completion(text=choice.text, token_ids=ids, logprobs=logprobs, finish_reason=finish, top_logprobs=tops)

    def _sampling_kwargs(self, p: SamplingParams, **request: Any) -> dict[str, Any]:
        """The OpenAI request fields for `p`, shared by the completions and chat endpoints."""
        kwargs: dict[str, Any] = {"model": self.model_id, **request, "max_tokens": p.max_tokens,
                                  "temperature": p.temperature, "top_p": p.top_p}
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if p.stop:
            kwargs["stop"] = list(p.stop)
        return kwargs

    def _chat_one(self, prompt: list[int], p: SamplingParams, extra: dict[str, Any]) -> Completion:
        messages, prefix = self.tokenizer.messages(prompt)
        if prefix:
            raise EngineCapabilityError(f"served model {self.model_id} takes chat messages only: it cannot continue a "
                                        f"pre-filled answer ({prefix!r})")
        if p.top_logprobs:
            raise EngineCapabilityError(f"served model {self.model_id} returns no token log-probs; use a judge in text mode")
        kwargs = self._sampling_kwargs(p, messages=messages)
        out = self._call(lambda c: c.chat.completions.create(**kwargs, extra_body=extra))
        choice = out.choices[0]
        text = choice.message.content or ""
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Completion(text=text, token_ids=tuple(self.tokenizer.encode(text)), logprobs=(), finish_reason=finish)

    def score(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        if not (self.capabilities["prompt_logprobs"] or self.capabilities["echo"]):
            raise EngineCapabilityError(f"served model {self.model_id} gives no prompt log-probs (neither vLLM's "
                                        "prompt_logprobs nor echo + logprobs): score needs an engine that does")
        sequences = [(len(p), list(map(int, p)) + list(map(int, t))) for p, t in zip(prompts, targets)]
        self.check_lengths([s for _, s in sequences], extra=1)
        return self._map(self._score_one, sequences)

    def _score_one(self, job: tuple[int, list[int]]) -> np.ndarray:
        start, seq = job
        if start == len(seq):
            return np.zeros(0, dtype=np.float64)
        base = {"model": self.model_id, "prompt": seq, "max_tokens": 1, "temperature": 0.0}
        if self.capabilities["prompt_logprobs"]:
            out = self._call(lambda c: c.completions.create(**base, extra_body={"prompt_logprobs": 0}))
            entries = out.choices[0].model_extra["prompt_logprobs"]  # entry t: {str(token_t): {logprob, ...}}
            return np.array([entries[t][str(seq[t])]["logprob"] for t in range(start, len(seq))], dtype=np.float64)
        out = self._call(lambda c: c.completions.create(**base, echo=True, logprobs=0,
                                                        extra_body={"return_tokens_as_token_ids": True}))
        lp = out.choices[0].logprobs
        echoed = [_token_id(t) for t in lp.tokens[:len(seq)]]
        if echoed != seq:
            raise ServerError(f"server echoed other tokens than the {len(seq)} sent; cannot score")
        return np.array(lp.token_logprobs[start:len(seq)], dtype=np.float64)

    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        raise EngineCapabilityError(f"served model {self.model_id} has no hidden states: CHES (ches_filter) needs an "
                                    "in-process engine (backend = 'vllm' or 'transformers')")

    def hidden_state_sums(self, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
        return self.hidden_states(sequences)  # type: ignore[return-value]

    def identity(self) -> dict[str, Any]:
        """The served model and what the server says about it; not the URLs, never the key."""
        return {"backend": self.backend.value, "model": self.model_id, "revision": self.revision,
                "served_root": self.served.get("root"), "served_parent": self.served.get("parent"),
                "tokenizer": self.config.tokenizer,
                "capabilities": dict(sorted(self.capabilities.items()))}

    def describe(self, identity: Any = None) -> dict[str, Any]:
        """stats.json and the card: the base summary plus what the server reported and can do
        (probed once at start); never the URLs or the key."""
        return {**super().describe(identity), "served_root": self.served.get("root"),
                "capabilities": dict(sorted(self.capabilities.items()))}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients:
            client.close()


def _short(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."
