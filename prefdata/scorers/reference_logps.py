"""The `reference_logps` build stage: precomputed reference log-probabilities for DPO.

DPO's loss needs log ref(y|x) for both responses of every pair (Rafailov et al. 2023, arXiv
2305.18290, Eq. 7). They never change during training, so a build can compute them once with an
engine's `score` (vLLM prompt log-probs, or a transformers forward) and the trainer then keeps no
reference model in memory (TRL's `precompute_ref_log_probs`, done at build time and stored in
the dataset instead of a cache file).

Reads `id`, `prompt`, `chosen`, `rejected`. Adds:
* `ref_chosen_logps`, `ref_rejected_logps` (float64): sum over response tokens of log ref(y_t | x, y_<t),
  with the tokens the trainer uses (`prefdata.schemas.formats.tokenize_pair`: TRL's rule, the chat
  template's end-of-turn tokens included);
* `ref_logps_model` (string): the engine's model, which the trainer checks against its reference.

Decisions: a pair longer than the engine's context gets nulls (counted as
`ref_logps_null_too_long`), never a truncated sum; the trainer rejects such rows when it trains
from the columns. Use `dtype = "float32"` on the engine for sums that match a float32 trainer to
~1e-3 nats (bf16 engines differ by up to ~1 nat on long responses).
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.citations import CITATIONS
from prefdata.engines.chat import ChatFormatter
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import EngineStage, StageOutput
from prefdata.schemas.formats import REF_CHOSEN, REF_MODEL, REF_REJECTED, tokenize_pair
from prefdata.schemas.pair import put_column

CITATION = CITATIONS["dpo"]


class ReferenceLogpsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reference_logps"] = "reference_logps"
    engine: str = Field("policy", description="Engine (under [engines]) holding the DPO reference: the model you will train")


def add_reference_columns(table: pa.Table, chosen: list[float | None], rejected: list[float | None], model: str) -> pa.Table:
    for name, values in ((REF_CHOSEN, chosen), (REF_REJECTED, rejected)):
        table = put_column(table, name, pa.array(values, type=pa.float64()))
    return put_column(table, REF_MODEL, pa.array([model] * table.num_rows, type=pa.string()))


class ReferenceLogpsStage(EngineStage):
    name: ClassVar[str] = "reference_logps"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt", "chosen", "rejected")
    adds: ClassVar[tuple[str, ...]] = (REF_CHOSEN, REF_REJECTED, REF_MODEL)
    config: ReferenceLogpsConfig

    def __init__(self, config: ReferenceLogpsConfig | None = None):
        super().__init__(config or ReferenceLogpsConfig())

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        engine = self.engine
        formatter = ChatFormatter(engine.tokenizer)
        counters: Counter = Counter()
        prompts, targets, owners = [], [], []  # one scoring request per (row, side)
        for r, row in enumerate(table.select(["prompt", "chosen", "rejected"]).to_pylist()):
            prompt_ids, chosen_ids, rejected_ids = tokenize_pair(formatter, row["prompt"], row["chosen"], row["rejected"])
            if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) + 1 > engine.max_model_len:
                counters["ref_logps_null_too_long"] += 1
                continue
            for side, ids in ((0, chosen_ids), (1, rejected_ids)):
                prompts.append(prompt_ids)
                targets.append(ids)
                owners.append((r, side))
        sums: list[list[float | None]] = [[None] * table.num_rows, [None] * table.num_rows]
        if prompts:
            for (r, side), logps in zip(owners, engine.score(prompts, targets)):
                sums[side][r] = float(logps.sum())
        counters["ref_logps_rows"] += sum(v is not None for v in sums[0])
        return StageOutput(add_reference_columns(table, sums[0], sums[1], engine.model_id), [], counters)
