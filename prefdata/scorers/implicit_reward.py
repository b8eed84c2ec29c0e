"""Implicit reward of a DPO-trained policy: r(x, y) = beta * (log pi(y|x) - log ref(y|x)).

Paper: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model" (arXiv 2305.18290), Sec. 5: the policy trained with DPO defines the reward
beta log pi(y|x)/ref(y|x) up to a per-prompt constant (which cancels in every pair margin).

Both log-probabilities come from the engines' `score` (teacher forcing; vLLM prompt log-probs
or a transformers forward), summed over the response tokens. Prompt and response tokens follow
TRL's rule (`ChatFormatter.split_response`), with the chat template's end-of-turn tokens, so the
reward is the one DPO's loss sees. Engines: `policy_engine` (the tuned model) and
`reference_engine` (its reference, usually the SFT model); both must share a tokenizer.

Decisions: `length_normalize` divides both sums by the number of response tokens (SimPO-style
average log-probability; off by default, as in DPO); a sequence longer than either engine's
context is null (`truncated`), never a truncated sum; an empty response is null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.citations import CITATIONS
from prefdata.engines.chat import ChatFormatter
from prefdata.schemas.pair import assistant_turn
from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.types import ScoreError

if TYPE_CHECKING:
    from prefdata.engines.base import Engine
    from prefdata.pipeline.context import BuildContext

CITATION = CITATIONS["dpo"]


class ImplicitRewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["implicit_reward"] = "implicit_reward"
    policy_engine: str = Field("policy", description="Engine (under [engines]) with the DPO-tuned policy pi")
    reference_engine: str = Field("reference", description="Engine (under [engines]) with the reference model ref")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta the policy was trained with")
    length_normalize: bool = Field(False, description="Average log-probs over response tokens instead of summing")


class ImplicitReward(Scorer):
    name: ClassVar[str] = "implicit_reward"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: ImplicitRewardConfig | None = None, policy: Engine | None = None,
                 reference: Engine | None = None):
        self.config = config or ImplicitRewardConfig()
        self.policy, self.reference = policy, reference

    def setup(self, ctx: BuildContext) -> None:
        self.policy = ctx.engine(self.config.policy_engine)
        self.reference = ctx.engine(self.config.reference_engine)

    def score(self, batch: ScoreBatch) -> ScoreResult:
        if self.policy is None or self.reference is None:
            raise RuntimeError("implicit reward needs a policy and a reference engine: call setup()")
        formatter = ChatFormatter(self.policy.tokenizer)
        n = len(batch)
        values: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        todo, prompts, targets = [], [], []
        limit = min(self.policy.max_model_len, self.reference.max_model_len)
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
            if not response.strip():
                errors[i] = ScoreError.EMPTY_RESPONSE.value
                continue
            prompt_ids, response_ids = formatter.split_response(prompt, assistant_turn(response))
            if len(prompt_ids) + len(response_ids) > limit:
                errors[i] = ScoreError.TRUNCATED.value
                continue
            todo.append(i)
            prompts.append(prompt_ids)
            targets.append(response_ids)
        if todo:
            for i, lp_pi, lp_ref in zip(todo, self.policy.score(prompts, targets), self.reference.score(prompts, targets)):
                pi, ref = float(lp_pi.sum()), float(lp_ref.sum())
                if self.config.length_normalize:
                    pi, ref = pi / len(lp_pi), ref / len(lp_ref)
                values[i] = self.config.beta * (pi - ref)
        return ScoreResult(values, errors)

    def identity(self) -> dict[str, Any]:
        engines = {k: e.identity() if e is not None else None for k, e in (("policy", self.policy), ("reference", self.reference))}
        return {"scorer": self.name, **self.config.model_dump(), "engines": engines}
