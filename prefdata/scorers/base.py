"""The scorer contract: responses in, one score per response out, or null with an error code.

A scorer never invents a score. When it cannot have one (no answer found, the judge put no
probability on any rating, the input is longer than its context), the value is None and
`errors[i]` says why; builders count the codes in stats.json and pairing leaves the row out.
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
