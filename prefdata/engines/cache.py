"""A request cache in front of any engine: a resumed build re-uses the generations it already paid for.

`CachedEngine` wraps an `Engine` and answers `generate` and `score` requests from a
`RequestStore` (one embedded SQLite file) when it has them. A request's key is the SHA-256 of
(the engine's real identity, `Engine.identity()`: backend, settings and what the model really
is - resolved hub commit, model folder fingerprint, embedded package version or in-memory weight
hash - plus the package versions; the operation; the sampling parameters including the
request's seed; the prompt token ids, and for `score` the target ids). An engine whose identity
is unknown (None) is never served from the cache. Values are stored as JSON (completions) or raw float64 bytes (scores), never pickled.

Decisions:
* Only reproducible requests are cached: `score` always; `generate` when the request has a seed
  or is greedy (temperature 0). An unseeded sample is a fresh draw each time, so caching it
  would change what the recipe means.
* One engine call per call the stage makes (whole-shard batches; `chunk` requests at most when
  set), its results committed in one transaction when it returns. A call is answered from the
  store only when every one of its requests is there; otherwise it goes to the engine whole,
  cached requests included (and stored again with this call's values), so a request cached by
  another call or an earlier build never shrinks the batch the others run in. The engine's
  numbers depend on which requests share its batches (vLLM: 8 of 64 samples' log-probs differed by up to 2.1e-5
  when the same requests ran as two calls), so results are committed per call and a resumed call
  sends exactly the requests the first run sent (a finished call is a whole cache hit): the
  batches an engine sees are the same in a resumed run, an uninterrupted one and with the cache
  off (`--no-cache` gives the same output). Committing each result as it finished would let a
  resume skip it, but the requests still running would then be recomputed in other batches,
  with other numbers. So a kill loses the call in flight, at most one shard's requests of one
  stage: `shard_size` bounds it. Progress still moves per finished request (`on_finished`).
* `hidden_states` is passed through: large arrays, cheap to recompute, used by filters only.
* The store has a size cap; past it the least recently written entries are deleted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefdata.engines.base import Completion, Engine, SamplingParams, normalise_params
from prefdata.faults import fault_point
from prefdata.schemas.pair import fingerprint

DEFAULT_MAX_BYTES = 2 * 1024**3


class RequestStore:
    """Key -> bytes in one SQLite file, with a size cap (oldest entries go first)."""

    def __init__(self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path, self.max_bytes = Path(path), max_bytes
        self._db: sqlite3.Connection | None = None  # opened on first use: a build without engines writes nothing
        self.counts: Counter = Counter({"hits": 0, "misses": 0})  # always in stats.json, even at 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            # The default rollback journal survives kill -9 (the next open rolls back a half-written
            # transaction) and leaves no extra file behind once closed.
            self._db.execute("CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                             "size INTEGER NOT NULL, written REAL NOT NULL)")
            self._db.commit()
        return self._db

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT key, value FROM requests WHERE key IN ({marks})", part).fetchall())
        return found  # hits and misses are counted by the caller, per call it serves or runs

    def put_many(self, items: dict[str, bytes]) -> None:
        now = time.time()
        with self.db:  # one transaction: a chunk is cached whole or not at all
            self.db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)",
                                [(k, v, len(v), now) for k, v in items.items()])
        self.counts["writes"] += len(items)
        self._enforce_cap()

    def size(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM requests").fetchone()[0])

    def _enforce_cap(self) -> None:
        total = self.size()
        if total <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)
        rows = self.db.execute("SELECT key, size FROM requests ORDER BY written, key").fetchall()
        evict = []
        for key, size in rows:
            if total <= target:
                break
            evict.append((key,))
            total -= size
        with self.db:
            self.db.executemany("DELETE FROM requests WHERE key = ?", evict)
        self.counts["evicted"] += len(evict)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _completion_to_json(c: Completion) -> dict[str, Any]:
    tops = None if c.top_logprobs is None else [{str(k): v for k, v in step.items()} for step in c.top_logprobs]
    return {"text": c.text, "token_ids": list(c.token_ids), "logprobs": list(c.logprobs),
            "finish_reason": c.finish_reason, "top_logprobs": tops}


def _completion_from_json(d: dict[str, Any]) -> Completion:
    tops = d["top_logprobs"]
    return Completion(text=d["text"], token_ids=tuple(d["token_ids"]), logprobs=tuple(d["logprobs"]),
                      finish_reason=d["finish_reason"],
                      top_logprobs=None if tops is None else tuple({int(k): v for k, v in s.items()} for s in tops))


def encode_completions(completions: Sequence[Completion]) -> bytes:
    # json writes floats with repr(): float64 values round-trip exactly.
    return json.dumps([_completion_to_json(c) for c in completions], separators=(",", ":")).encode()


def decode_completions(data: bytes) -> list[Completion]:
    return [_completion_from_json(d) for d in json.loads(data)]


def _cacheable(p: SamplingParams) -> bool:
    return p.seed is not None or p.temperature == 0


_ASK = object()


class CachedEngine(Engine):
    """An engine that asks `store` before it asks `inner` (store None: chunking only, no cache).

    `identity` is the wrapped engine's identity when the caller already has it (else it is asked
    once, here: an in-memory model is hashed once per wrapper, i.e. once per build); `key` is what
    requests are keyed by (default: that identity; the builder adds package versions,
    `prefdata.pipeline.identity.engine_key`). A None key (an engine whose identity is unknown)
    turns the store off for this engine: nothing is read from or written to the cache for it.
    `on_chunk(operation, done, total)`, when set, is called as requests finish (progress displays):
    after each engine call, and in between with what the wrapped engine reports (`on_finished`).
    `chunk` caps the requests of one engine call (None: a whole call of the stage's).
    """

    on_chunk: Callable[[str, int, int], None] | None = None

    def __init__(self, inner: Engine, store: RequestStore | None, identity: Any = _ASK, chunk: int | None = None,
                 *, key: Any = _ASK):
        self.inner, self.chunk = inner, chunk
        self._engine_identity: dict[str, Any] | None = inner.identity() if identity is _ASK else identity
        self._identity: dict[str, Any] | None = self._engine_identity if key is _ASK else key
        self.store = store if self._identity is not None else None
        self.backend, self.model_id, self.model_path = inner.backend, inner.model_id, inner.model_path
        self.revision, self.tokenizer, self.max_model_len = inner.revision, inner.tokenizer, inner.max_model_len

    # The wrapped engine's attributes, read through (tokenizer, max_model_len, model_id, ...).
    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def identity(self) -> dict[str, Any] | None:
        return self._engine_identity

    def describe(self, identity: Any = None) -> dict[str, Any]:
        return self.inner.describe(self._engine_identity if identity is None else identity)

    def _key(self, op: str, *parts: Any) -> str:
        return fingerprint([self._identity, op, *parts])

    def _chunked(self, count: int, keys: list[str | None], run: Callable[[list[int]], list[Any]],
                 encode: Callable[[Any], bytes], decode: Callable[[bytes], Any], op: str = "") -> list[Any]:
        results: list[Any] = [None] * count
        size = self.chunk or max(count, 1)
        for start in range(0, count, size):
            positions = list(range(start, min(start + size, count)))
            wanted = {keys[i] for i in positions if keys[i] is not None}
            # an uncacheable request (unseeded sample) sends the call whole anyway: no lookup then
            cacheable = self.store is not None and len(wanted) > 0 and all(keys[i] is not None for i in positions)
            found = self.store.get_many(sorted(wanted)) if cacheable else {}
            if cacheable and wanted <= found.keys():
                self.store.counts["hits"] += len(wanted)
                for i in positions:
                    results[i] = decode(found[keys[i]])
            else:  # the whole call, cached requests too: the engine sees the batch it sees with the cache off
                for i, value in zip(positions, self._run_reporting(run, positions, op, start, count)):
                    results[i] = value
                if self.store is not None:
                    self.store.counts["misses"] += len(wanted)
                    # every request of the call, the recomputed ones too: a resume that finds this call
                    # whole must get the values this run used
                    self.store.put_many({keys[i]: encode(results[i]) for i in positions if keys[i] is not None})
                fault_point("engine_chunk")
            if self.on_chunk is not None:
                self.on_chunk(op, positions[-1] + 1, count)
        return results

    def _run_reporting(self, run: Callable[[list[int]], list[Any]], todo: list[int], op: str, before: int,
                       total: int) -> list[Any]:
        """`run(todo)`, passing the wrapped engine's per-request progress on as `on_chunk` calls."""
        if self.on_chunk is None:
            return run(todo)
        report = self.on_chunk
        self.inner.on_finished = lambda done: report(op, before + done, total)
        try:
            return run(todo)
        finally:
            self.inner.on_finished = None

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        per_prompt = normalise_params(params, len(prompts))
        keys = [self._key("generate", p.as_dict(), list(map(int, ids))) if _cacheable(p) else None
                for ids, p in zip(prompts, per_prompt)]
        return self._chunked(len(prompts), keys,
                             lambda todo: self.inner.generate([prompts[i] for i in todo], [per_prompt[i] for i in todo]),
                             encode_completions, decode_completions, "generate")

    def score(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        keys = [self._key("score", list(map(int, p)), list(map(int, t))) for p, t in zip(prompts, targets)]
        return self._chunked(len(prompts), keys,
                             lambda todo: self.inner.score([prompts[i] for i in todo], [targets[i] for i in todo]),
                             lambda a: np.asarray(a, dtype="<f8").tobytes(),
                             lambda b: np.frombuffer(b, dtype="<f8").astype(np.float64), "score")

    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return self.inner.hidden_states(sequences)

    def hidden_state_sums(self, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
        # Cached like `score` (a resumed CHES shard re-uses its forward passes), and computed by the
        # wrapped engine's own override (device-side sums), not the base class's fallback.
        keys = [self._key("hidden_state_sums", list(map(int, seq)), [int(a), int(b)])
                for seq, (a, b) in zip(sequences, spans)]
        rows = self._chunked(len(sequences), keys,
                             lambda todo: list(self.inner.hidden_state_sums([sequences[i] for i in todo],
                                                                            [spans[i] for i in todo])),
                             lambda a: np.asarray(a, dtype="<f8").tobytes(),
                             lambda b: np.frombuffer(b, dtype="<f8").astype(np.float64), "hidden_state_sums")
        return np.stack(rows) if rows else np.zeros((0, 0))

    def close(self) -> None:
        """The pool closes the wrapped engine; the wrapper holds nothing of its own."""
