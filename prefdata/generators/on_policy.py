"""On-policy sampled pairs.

Paper: Tajwar et al. 2024, "Preference Fine-Tuning of LLMs Should Leverage Suboptimal,
On-Policy Data" (arXiv 2404.14367). Sample n responses per prompt from the policy itself,
score each, and pair them (`prefdata.schemas.pairing`: max_min by default, max_random,
random, ranked). The paper's finding: on-policy samples with a contrastive loss beat offline
data.

Reads `id`, `prompt`, `reference` (prompt table). Writes pair rows with
`chosen_score`/`rejected_score` = the scorer's values and `margin` = their difference.
Metadata: n_samples, strategy, rank (0 = largest gap), chosen_index/rejected_index (sample
positions), finish reasons, scorer and policy model.

Decisions: each prompt's samples use a seed derived from (recipe seed, prompt id), so a prompt
gets the same samples whatever shard it is in; prompts longer than the policy's context are
rejected (`prompt_too_long`), never truncated; a prompt that yields no pair is written to the
rejects with its samples and scores (`no_pair`), so the generations are not lost.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.chat import ChatFormatter
from prefdata.generators.config import SamplingConfig
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import Reject
from prefdata.schemas.pair import CORE_PAIR_COLUMNS, assistant_turn, make_pair_id, pair_schema
from prefdata.schemas.pairing import make_pairs
from prefdata.scorers import JudgeConfig, ScoreBatch, ScorerConfig, make_scorer
from prefdata.types import PairingStrategy, RejectReason

CITATION = """@article{tajwar2024preference,
  title={Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data},
  author={Tajwar, Fahim and Singh, Anikait and Sharma, Archit and Rafailov, Rafael and Schneider, Jeff and Xie, Tengyang and Ermon, Stefano and Finn, Chelsea and Kumar, Aviral},
  journal={arXiv preprint arXiv:2404.14367},
  year={2024}
}"""

METADATA_TYPE = pa.struct([
    pa.field("n_samples", pa.int32()),
    pa.field("strategy", pa.string()),
    pa.field("rank", pa.int32()),
    pa.field("chosen_index", pa.int32()),
    pa.field("rejected_index", pa.int32()),
    pa.field("chosen_finish", pa.string()),
    pa.field("rejected_finish", pa.string()),
    pa.field("scorer", pa.string()),
    pa.field("policy", pa.string()),
])


class OnPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["on_policy"] = "on_policy"
    engine: str = Field("policy", description="Engine (under [engines]) that samples the responses")
    n: int = Field(4, ge=2, description="Responses sampled per prompt")
    strategy: PairingStrategy = Field(PairingStrategy.MAX_MIN, description="How scored samples become pairs")
    min_margin: float = Field(0.0, ge=0, description="A pair needs chosen_score - rejected_score > min_margin")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling settings")
    scorer: ScorerConfig = Field(default_factory=JudgeConfig, description="How each response is scored")


class OnPolicyGenerator(Stage):
    name: ClassVar[str] = "on_policy"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt", "reference")
    adds: ClassVar[tuple[str, ...]] = CORE_PAIR_COLUMNS
    replaces_columns: ClassVar[bool] = True
    config: OnPolicyConfig

    def __init__(self, config: OnPolicyConfig | None = None):
        super().__init__(config or OnPolicyConfig())
        self.scorer = make_scorer(self.config.scorer)
        self.engine: Any = None

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)
        self.scorer.setup(ctx)

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        cfg, engine = self.config, self.engine
        formatter = ChatFormatter(engine.tokenizer)
        rejects: list[Reject] = []
        counters: Counter = Counter()
        rows, prompt_ids = [], []
        for row in table.to_pylist():
            ids = formatter.prompt_ids(row["prompt"])
            if len(ids) + 1 > engine.max_model_len:
                rejects.append(Reject(self.name, RejectReason.PROMPT_TOO_LONG, row_id=row["id"], field="prompt",
                                      detail=f"{len(ids)} prompt tokens; the policy's context is {engine.max_model_len}",
                                      payload=row))
                continue
            rows.append(row)
            prompt_ids.append(ids)
        params = [cfg.sampling.params(cfg.n, ctx.seed_for(self.name, row["id"])) for row in rows]
        samples = engine.generate(prompt_ids, params) if rows else []
        counters["responses"] += sum(len(s) for s in samples)
        counters["truncated_responses"] += sum(c.finish_reason == "length" for s in samples for c in s)

        flat = [(r, c) for r, completions in enumerate(samples) for c in completions]
        scored = self.scorer.score(ScoreBatch(
            prompts=[rows[r]["prompt"] for r, _ in flat], responses=[c.text for _, c in flat],
            references=[rows[r]["reference"] for r, _ in flat]))
        counters.update({f"score_null_{code}": n for code, n in scored.error_counts().items()})

        parameters = {"config": cfg.model_dump(mode="json"), "policy": engine.identity(), "scorer": self.scorer.identity()}
        out_rows, offset = [], 0
        for r, row in enumerate(rows):
            completions = samples[r]
            scores = scored.values[offset : offset + len(completions)]
            offset += len(completions)
            texts = [c.text for c in completions]
            rng = random.Random(ctx.seed_for(self.name, "pairing", row["id"]))
            result = make_pairs(scores, texts, cfg.strategy, rng, cfg.min_margin)
            counters.update(result.counts)
            if not result.pairs:
                reason = "all scored responses tied" if result.counts["no_pair_all_tied"] else "fewer than two scored, distinct responses"
                rejects.append(Reject(self.name, RejectReason.NO_PAIR, row_id=row["id"], detail=reason,
                                      payload={**row, "responses": texts, "scores": scores}))
                continue
            for pair in result.pairs:
                chosen, rejected = completions[pair.chosen], completions[pair.rejected]
                cs, rs = scores[pair.chosen], scores[pair.rejected]
                out_rows.append({
                    "id": make_pair_id(row["id"], self.name, parameters, key=[pair.chosen, pair.rejected]),
                    "prompt_id": row["id"],
                    "prompt": row["prompt"],
                    "chosen": assistant_turn(chosen.text),
                    "rejected": assistant_turn(rejected.text),
                    "chosen_score": cs,
                    "rejected_score": rs,
                    "margin": cs - rs,
                    "source": self.name,
                    "metadata": {
                        "n_samples": len(completions), "strategy": cfg.strategy.value, "rank": pair.rank,
                        "chosen_index": pair.chosen, "rejected_index": pair.rejected,
                        "chosen_finish": chosen.finish_reason, "rejected_finish": rejected.finish_reason,
                        "scorer": self.scorer.name, "policy": engine.model_id,
                    },
                })
        return StageOutput(pa.Table.from_pylist(out_rows, schema=pair_schema(METADATA_TYPE)), rejects, counters)
