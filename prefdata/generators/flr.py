"""FLR pairs: on-policy samples ranked by follow-up likelihood as reward, best vs worst.

Paper: Zhang et al. 2025, "Aligning Language Models Using Follow-up Likelihood as Reward
Signal" (AAAI-25, arXiv 2409.13948). The policy samples n responses per prompt; each is
scored by FLR (`prefdata.scorers.flr`):

    FLR(x, y) = mean_{f in F+} s(f) - mean_{f in F-} s(f),  s(f) = mean_t log p(f_t | x, y, f_<t)

and the pair is the response with the highest FLR against the one with the lowest.

This stage is the on-policy generator (`prefdata.generators.on_policy`) with its scorer fixed
to FLR: sampling, seeds, pairing (`max_min` by default; any `PairingStrategy`), ties, nulls,
rejects and metadata are the on-policy generator's own code, not a copy. Reads `id`, `prompt`,
`reference`; writes pair rows with `source = "flr"` and `chosen_score`/`rejected_score` = FLR.

Decisions: the FLR engine defaults to the policy itself (`engine = "policy"`); name another
engine under `[stages.scorer]` to score with a different model, as the paper does with a
stronger one. Scores are log-probabilities of the paper's formula, not the released code's
raw logits (see the scorer's page).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from prefdata.generators.on_policy import CITATION as ON_POLICY_CITATION
from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator
from prefdata.scorers.flr import CITATION as FLR_CITATION
from prefdata.scorers.flr import FLRConfig


class FLRPairsConfig(OnPolicyConfig):
    type: Literal["flr"] = "flr"  # type: ignore[assignment]
    scorer: FLRConfig = Field(default_factory=FLRConfig,  # type: ignore[assignment]
                              description="FLR settings: scoring engine, categories or your own follow-ups")


class FLRPairsGenerator(OnPolicyGenerator):
    name: ClassVar[str] = "flr"
    citation: ClassVar[str | None] = FLR_CITATION + "\n\n" + ON_POLICY_CITATION
    config: FLRPairsConfig

    def __init__(self, config: FLRPairsConfig | None = None):
        super().__init__(config or FLRPairsConfig())
