"""The scorer contracts: responses in, one score per response out (`Scorer`); or pairs in, one
margin per pair out (`PairScorer`); or null with an error code.

A scorer never invents a score. When it cannot have one (no answer found, the judge put no
probability on any rating, the input is longer than its context), the value is None and
`errors[i]` says why; builders count the codes in stats.json and pairing leaves the row out.

A pair scorer returns d = how much better chosen is than rejected: a score difference, or for a
pairwise judge the log-odds that chosen is better. `PointwisePairs` turns any `Scorer` into a
`PairScorer` (both sides in one batch), so an ensemble can mix both kinds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from prefdata.types import Chat, ScoreError

if TYPE_CHECKING:
    from prefdata.pipeline.context import BuildContext


@dataclass
class ScoreBatch:
    """Responses to score: `prompts[i]` is the chat `responses[i]` answers; `references[i]` is an
    optional reference answer (verifiers need it)."""

    prompts: Sequence[Chat]
    responses: Sequence[str]
    references: Sequence[str | None] | None = None

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} responses")
        if self.references is not None and len(self.references) != len(self.responses):
            raise ValueError(f"{len(self.references)} references but {len(self.responses)} responses")

    def reference(self, i: int) -> str | None:
        return None if self.references is None else self.references[i]

    def __len__(self) -> int:
        return len(self.responses)


@dataclass
class ScoreResult:
    values: list[float | None]
    errors: list[str | None]
    extra: dict[str, list[Any]] = field(default_factory=dict)  # per-row diagnostics (e.g. rating mass)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.errors):
            raise ValueError("values and errors differ in length")
        for i, (v, e) in enumerate(zip(self.values, self.errors)):
            if v is None and e is None:
                raise ValueError(f"row {i}: a null score needs an error code")
            if v is not None and not math.isfinite(v):
                raise ValueError(f"row {i}: score {v} is not finite; return None with an error code")

    @classmethod
    def empty(cls, n: int) -> ScoreResult:
        return cls(values=[None] * n, errors=[ScoreError.EMPTY_RESPONSE.value] * n)

    def error_counts(self) -> Counter[str]:
        return Counter(e for v, e in zip(self.values, self.errors) if v is None)


class Scorer(ABC):
    """Scores responses. `setup` receives the build context (engines are loaded there, once)."""

    name: ClassVar[str]
    citation: ClassVar[str | None] = None

    def setup(self, ctx: BuildContext) -> None:  # noqa: B027 - scorers without engines need nothing
        """Acquire engines or models from the context."""

    @abstractmethod
    def score(self, batch: ScoreBatch) -> ScoreResult:
        """One value (or None + error code) per response, in input order."""

    def identity(self) -> dict[str, Any]:
        """What determines this scorer's outputs (config, models) for fingerprints and cards."""
        return {"scorer": self.name}


@dataclass
class PairBatch:
    """Pairs to score: `prompts[i]` is the chat both `chosen[i]` and `rejected[i]` answer;
    `references[i]` an optional reference answer (verifiers need it)."""

    prompts: Sequence[Chat]
    chosen: Sequence[str]
    rejected: Sequence[str]
    references: Sequence[str | None] | None = None

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.chosen) == len(self.rejected):
            raise ValueError(f"{len(self.prompts)} prompts, {len(self.chosen)} chosen, {len(self.rejected)} rejected")
        if self.references is not None and len(self.references) != len(self.prompts):
            raise ValueError(f"{len(self.references)} references but {len(self.prompts)} pairs")

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class PairScoreResult:
    """One value per pair: `margins[i]` = d_i, how much better chosen is than rejected (a score
    difference, or for a pairwise judge the log-odds that chosen is better); None + `errors[i]`
    when it cannot be had. `chosen`/`rejected` hold per-side scores for scorers that have them
    (None entries for pairwise scorers, which judge only the difference)."""

    margins: list[float | None]
    errors: list[str | None]
    chosen: list[float | None]
    rejected: list[float | None]
    extra: dict[str, list[Any]] = field(default_factory=dict)  # per-pair diagnostics (e.g. per-order verdicts)
    counters: Counter = field(default_factory=Counter)  # batch-level counts (e.g. position-consistent verdicts)

    def __post_init__(self) -> None:
        n = len(self.margins)
        if not len(self.errors) == len(self.chosen) == len(self.rejected) == n:
            raise ValueError("margins, errors, chosen and rejected differ in length")
        for key, values in self.extra.items():
            if len(values) != n:
                raise ValueError(f"extra[{key!r}] has {len(values)} entries for {n} pairs")
        for i, (d, e) in enumerate(zip(self.margins, self.errors)):
            if d is None and e is None:
                raise ValueError(f"pair {i}: a null margin needs an error code")
            for v in (d, self.chosen[i], self.rejected[i]):
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"pair {i}: score {v} is not finite; return None with an error code")

    def error_counts(self) -> Counter[str]:
        return Counter(e for d, e in zip(self.margins, self.errors) if d is None)


class PairScorer(ABC):
    """Scores pairs directly (a pairwise judge), or adapts a per-response `Scorer` to pairs."""

    name: ClassVar[str]
    citation: ClassVar[str | None] = None
    is_adapter: ClassVar[bool] = False  # True for wrappers: the dataset card cites what they wrap

    def setup(self, ctx: BuildContext) -> None:  # noqa: B027 - scorers without engines need nothing
        """Acquire engines or models from the context."""

    @abstractmethod
    def score_pairs(self, batch: PairBatch) -> PairScoreResult:
        """One margin (or None + error code) per pair, in input order."""

    def identity(self) -> dict[str, Any]:
        return {"scorer": self.name}


class PointwisePairs(PairScorer):
    """A per-response `Scorer` applied to pairs: both sides in one batch, d = s(chosen) - s(rejected).

    If either side is null the margin is null with that side's error code (the chosen side's
    first): one unscorable response makes the whole comparison unknown, never half-invented.
    """

    is_adapter: ClassVar[bool] = True

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.scorer.name

    def setup(self, ctx: BuildContext) -> None:
        self.scorer.setup(ctx)

    def score_pairs(self, batch: PairBatch) -> PairScoreResult:
        n = len(batch)
        references = None if batch.references is None else [*batch.references, *batch.references]
        result = self.scorer.score(ScoreBatch(prompts=[*batch.prompts, *batch.prompts],
                                              responses=[*batch.chosen, *batch.rejected], references=references))
        chosen, rejected = result.values[:n], result.values[n:]
        margins: list[float | None] = []
        errors: list[str | None] = []
        for i in range(n):
            if chosen[i] is None or rejected[i] is None:
                margins.append(None)
                errors.append(result.errors[i] if chosen[i] is None else result.errors[n + i])
            else:
                margins.append(chosen[i] - rejected[i])
                errors.append(None)
        extra = {}
        for key, values in result.extra.items():
            extra[f"chosen_{key}"], extra[f"rejected_{key}"] = values[:n], values[n:]
        return PairScoreResult(margins, errors, list(chosen), list(rejected), extra)

    def identity(self) -> dict[str, Any]:
        return self.scorer.identity()
