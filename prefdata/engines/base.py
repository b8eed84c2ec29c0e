"""The narrow engine interface every backend implements.

An engine works on token ids, never on chat dicts: prompts are rendered once by
`prefdata.engines.chat.ChatFormatter` (the model's own chat template), so every backend sees the
same tokens and results can be compared token for token. Three operations:

* `generate(prompts, params)` -> for each prompt, `params.n` completions with their token ids,
  the raw (temperature-1) log-probability of each sampled token, and optionally the top-k
  alternatives at each step;
* `score(prompts, targets)` -> per-token log p(target_t | prompt, target_<t) (teacher forcing);
* `hidden_states(sequences)` -> the final-layer hidden states (after the final norm) of each
  token of each sequence; `hidden_state_sums(sequences, spans)` -> their sum over one span of
  positions per sequence (CHES needs only sums; backends may sum on the device).

Results always come back in the order of the inputs (by position, never matched by text:
duplicate prompts are common and must stay distinct).

`SamplingParams` is prefdata's own frozen dataclass; each backend maps it to its library's
type inside the backend, so library keyword arguments never leak into recipes.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prefdata.schemas.pair import fingerprint
from prefdata.types import EngineBackend


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `seed` makes a request reproducible on its own, whatever else is in the batch
    (as far as the backend's numerics allow); with n > 1 each sample gets `derive_seed(seed, i)`."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k truncation
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # also return the k most likely tokens (raw log-probs) at each step

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_tokens < 1 or self.top_logprobs < 0:
            raise ValueError("top_k and top_logprobs must be >= 0 and max_tokens >= 1")
        object.__setattr__(self, "stop", tuple(self.stop))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def per_sample(self) -> list[SamplingParams]:
        """n single-sample requests with derived seeds (n > 1 with one seed would repeat one sample)."""
        from dataclasses import replace

        if self.n == 1:
            return [self]
        return [replace(self, n=1, seed=None if self.seed is None else derive_seed(self.seed, i)) for i in range(self.n)]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # raw log p of each sampled token
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    top_logprobs: tuple[dict[int, float], ...] | None = None

    @property
    def cumulative_logprob(self) -> float:
        return float(sum(self.logprobs))


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (stable across processes and machines)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def normalise_params(params: SamplingParams | Sequence[SamplingParams], count: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling params for {count} prompts")
    return params


class Engine(ABC):
    """A loaded model that generates, scores and exposes hidden states. Use as a context manager
    or call `close()`: vLLM runs a separate engine process that must be shut down explicitly."""

    backend: EngineBackend
    model_id: str  # what the user asked for (hub id, folder or embedded name)
    model_path: str  # what was loaded
    revision: str | None = None
    tokenizer: Any
    max_model_len: int
    # Set by a caller that shows progress; engines that finish a call's requests one by one (vLLM)
    # call it with how many of the call's prompts are done so far. Others report nothing.
    on_finished: Callable[[int], None] | None = None

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        """For each prompt (token ids), `params.n` completions, in input order."""

    @abstractmethod
    def score(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log-probabilities (float64 arrays) of each target after its prompt."""

    @abstractmethod
    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Final-layer hidden states, float32 [len(seq), hidden], for each token sequence."""

    def hidden_state_sums(self, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Sum of the final-layer hidden states over positions [start, end) of each sequence:
        float64 [len(sequences), hidden] (an empty span sums to zeros). Backends that can sum on
        the device override this; the default sums `hidden_states` in float64."""
        check_spans(sequences, spans)
        states = self.hidden_states(sequences)
        if not states:
            return np.zeros((0, 0))
        return np.stack([s[a:b].sum(axis=0, dtype=np.float64) for s, (a, b) in zip(states, spans)])

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing outside the process
        """Release the model (and any engine process)."""

    def identity(self) -> dict[str, Any] | None:
        """What determines this engine's outputs: the contract every backend implements.

        Return a JSON-serialisable dict that changes whenever the engine could answer the same
        request differently, and only then: the backend, the REAL model (not its name: a hub id's
        resolved commit, a local folder's file fingerprint, an embedded model's package version,
        an in-memory model's weight hash; see `prefdata.engines.identity`) and the settings that
        change numerics (dtype, context length, batch settings). Never a URL, a path that only
        locates the model, a token or a key: a served backend reports the served model's name and
        what its server says it serves (`/v1/models` id/root, revision if known). Return None when
        the identity cannot be had cheaply: nothing this engine computes is then reused (no
        checkpoint of a stage using it, no request-cache entry). Checkpoints
        (`prefdata.pipeline.identity`) and the request cache (`prefdata.engines.cache`) key on it;
        generators also put it into pair ids. The default is None (unknown)."""
        return None

    def describe(self, identity: Any = None) -> dict[str, Any]:
        """What stats.json and the dataset card show for this engine: the name it was asked for,
        what that name resolved to (commit, folder fingerprint, package version) and a short hash
        of its identity, or "unknown". Pass `identity` when it is already known."""
        identity = self.identity() if identity is None else identity
        out: dict[str, Any] = {"backend": self.backend.value, "model": self.model_id, "revision": self.revision}
        if identity is None:
            return {**out, "identity": "unknown (results not reused)"}
        model = identity.get("model")
        if isinstance(model, dict):
            out.update({k: v for k, v in model.items() if isinstance(v, str | int | float) and k not in out})
        return {**out, "identity": fingerprint(identity)[:16]}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_lengths(self, sequences: Sequence[Sequence[int]], extra: int = 0) -> None:
        for i, seq in enumerate(sequences):
            if len(seq) + extra > self.max_model_len:
                raise ContextLengthError(i, len(seq) + extra, self.max_model_len)


def check_spans(sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> None:
    if len(sequences) != len(spans):
        raise ValueError(f"{len(sequences)} sequences but {len(spans)} spans")
    for i, (seq, (start, end)) in enumerate(zip(sequences, spans)):
        if not 0 <= start <= end <= len(seq):
            raise ValueError(f"sequence {i}: span [{start}, {end}) is outside its {len(seq)} tokens")


class FinishedPrompts:
    """Counts a call's prompts whose requests (`owners[i]`: the prompt request i belongs to) are all
    done, and reports the count to `report` (an engine's `on_finished`) whenever it grows."""

    def __init__(self, owners: Sequence[int], report: Callable[[int], None] | None):
        self.owners, self.report, self.done = list(owners), report, 0
        self.left = Counter(self.owners)

    def add(self, requests: Iterable[int]) -> None:
        newly = 0
        for i in requests:
            self.left[self.owners[i]] -= 1
            newly += self.left[self.owners[i]] == 0
        self.done += newly
        if newly and self.report is not None:
            self.report(self.done)


class ContextLengthError(ValueError):
    def __init__(self, index: int, length: int, limit: int):
        self.index, self.length, self.limit = index, length, limit
        super().__init__(f"request {index}: {length} tokens exceed the model context of {limit}")
