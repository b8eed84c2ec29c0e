"""CHES: centered hidden embedding similarity, a likelihood-displacement risk score per pair.

Razin et al. 2025, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (ICLR 2025, arXiv 2410.08847; code princeton-nlp/unintentional-unalignment,
ches/ches.py). Pairs whose chosen and rejected responses look alike to the model push DPO to
lower the chosen response's likelihood too; CHES measures that likeness.

With h_t the model's final-layer hidden states (after the final norm) over prompt+response,
keep the positions from the LAST PROMPT TOKEN through the SECOND-TO-LAST response token (the
states that predict each response token): |y| positions for a response of |y| tokens.

    H+ = sum_t h_t over (x, y+),  H- likewise over (x, y-)
    CHES    = <H+, H-> - ||H+||^2
    LN-CHES = <H+, H-> / (|y+| |y-|) - ||H+||^2 / |y+|^2

Higher means more similar, more displacement risk. The paper kept the 5% of pairs with the
lowest LN-CHES.

Two stages, so a user can look at the scores before anything is deleted:

* `ches` (score): reads `id, prompt, chosen, rejected`; adds `ches`, `ln_ches` (float64).
* `ches_filter` (decide): reads `id, ches, ln_ches`; drops by the configured rule, each dropped
  row a reject with reason `ches_high` naming its score and the rule. By default it drops
  the 5% of pairs with the highest `ln_ches`.

Decisions:
* Tokens are the trainer's (`prefdata.train.data.tokenize_pair`: TRL's rule, one shared prompt,
  the chat template's end-of-turn tokens in the response), so CHES describes exactly the
  sequences DPO will train on.
* Both sides of every pair in a shard go to the engine in one `hidden_state_sums` call; the
  transformers engine sums on the device in float32 from states in the model's dtype (bf16 by
  default), vLLM returns float32 states that are summed in float64. Inner products are float64.
  Padding side is the engine's business (each row's span is read from its own offset); the
  tests check left and right padding against a forward pass of each sequence alone.
* A pair with an empty response side, an empty prompt, or longer than the engine's context gets
  null scores (counters `ches_null_empty`, `ches_null_too_long`), never a truncated sum.
* Deciding: `drop_top_share` drops round(share * n) rows with the highest score, `keep_lowest`
  keeps round(share * n) rows with the lowest (the paper's rule), `drop_above` drops scores
  above an absolute threshold. Ties are broken by `id`, so the counts are exact. n counts the
  non-null scores; null-score rows are kept by default (no evidence of risk) or dropped with
  reason `ches_null` when `nulls = "drop"`.
* Share rules rank the whole input, whatever the shards: `ches_filter` is map -> fit -> apply
  (`WholeInputStage`). `fit` sorts the (id, score) view of all shards once and keeps the last
  dropped (score, id); `apply` drops each shard's rows that sort at or before it, so the dropped
  set is the one a single table would give. `per_shard = true` takes the share of each shard
  instead; `drop_above` is per row by construction.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.engines.chat import ChatFormatter
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import EngineStage, StageOutput, WholeInputStage
from prefdata.schemas.errors import Reject, row_payloads
from prefdata.schemas.formats import tokenize_pair
from prefdata.schemas.pair import put_column
from prefdata.types import RejectReason

CITATION = """@inproceedings{razin2025unintentional,
  title={Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization},
  author={Razin, Noam and Malladi, Sadhika and Bhaskar, Adithya and Chen, Danqi and Arora, Sanjeev and Hanin, Boris},
  booktitle={ICLR},
  year={2025},
  note={arXiv:2410.08847}
}"""

CHES, LN_CHES = "ches", "ln_ches"


def ches_scores(h_chosen: np.ndarray, h_rejected: np.ndarray, n_chosen: np.ndarray,
                n_rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CHES, LN-CHES) per pair from summed hidden states [pairs, hidden] and response lengths [pairs]."""
    h_chosen, h_rejected = np.asarray(h_chosen, np.float64), np.asarray(h_rejected, np.float64)
    n_chosen, n_rejected = np.asarray(n_chosen, np.float64), np.asarray(n_rejected, np.float64)
    cross = np.einsum("pd,pd->p", h_chosen, h_rejected)
    own = np.einsum("pd,pd->p", h_chosen, h_chosen)
    return cross - own, cross / (n_chosen * n_rejected) - own / n_chosen**2


def response_span(prompt_len: int, response_len: int) -> tuple[int, int]:
    """Positions [last prompt token, second-to-last response token] as a half-open range."""
    return prompt_len - 1, prompt_len + response_len - 1


class ChesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ches"] = "ches"
    engine: str = Field("policy", description="Engine (under [engines]) holding the model to be trained: CHES is model-specific")


class ChesStage(EngineStage):
    """Score step: adds `ches` and `ln_ches` (see the module docstring)."""

    name: ClassVar[str] = "ches"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt", "chosen", "rejected")
    adds: ClassVar[tuple[str, ...]] = (CHES, LN_CHES)
    config: ChesConfig

    def __init__(self, config: ChesConfig | None = None):
        super().__init__(config or ChesConfig())

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        engine = self.engine or ctx.engine(self.config.engine)
        formatter = ChatFormatter(engine.tokenizer)
        counters: Counter = Counter()
        sequences, spans, rows, lengths = [], [], [], []  # sequences: chosen, rejected of each scored row
        for r, row in enumerate(table.select(["prompt", "chosen", "rejected"]).to_pylist()):
            prompt, chosen, rejected = tokenize_pair(formatter, row["prompt"], row["chosen"], row["rejected"])
            if not prompt or not chosen or not rejected:
                counters["ches_null_empty"] += 1
                continue
            if len(prompt) + max(len(chosen), len(rejected)) > engine.max_model_len:
                counters["ches_null_too_long"] += 1
                continue
            for response in (chosen, rejected):
                sequences.append(prompt + response)
                spans.append(response_span(len(prompt), len(response)))
            rows.append(r)
            lengths.append((len(chosen), len(rejected)))
        ches = np.full(table.num_rows, np.nan)
        ln_ches = np.full(table.num_rows, np.nan)
        if rows:
            sums = engine.hidden_state_sums(sequences, spans)
            n = np.asarray(lengths, dtype=np.float64)
            ches[rows], ln_ches[rows] = ches_scores(sums[0::2], sums[1::2], n[:, 0], n[:, 1])
        counters["ches_scored"] += len(rows)
        for name, values in ((CHES, ches), (LN_CHES, ln_ches)):
            table = put_column(table, name, pa.array(values, type=pa.float64(), mask=np.isnan(values)))
        return StageOutput(table, [], counters)


class ChesFilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ches_filter"] = "ches_filter"
    score: Literal["ln_ches", "ches"] = Field("ln_ches", description="Which score decides (the paper used ln_ches)")
    rule: Literal["drop_top_share", "keep_lowest", "drop_above"] = Field(
        "drop_top_share", description="drop the highest `share`; keep only the lowest `share`; or drop scores above `threshold`")
    share: float = Field(0.05, gt=0, lt=1, description="Share of scored rows dropped (drop_top_share) or kept (keep_lowest)")
    threshold: float | None = Field(None, description="drop_above: rows with a score above this are dropped")
    nulls: Literal["keep", "drop"] = Field("keep", description="Rows without a score: keep them, or drop them (reason ches_null)")
    per_shard: bool = Field(False, description="Take the share of each shard instead of the share of the whole input")

    @model_validator(mode="after")
    def _rule_needs_its_parameter(self) -> ChesFilterConfig:
        if self.rule == "drop_above" and self.threshold is None:
            raise ValueError("rule 'drop_above' needs `threshold`")
        return self


class ChesFilterStage(WholeInputStage):
    """Decide step: drops rows by `ches`/`ln_ches` with per-reason counts (see the module docstring)."""

    name: ClassVar[str] = "ches_filter"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", CHES, LN_CHES)
    config: ChesFilterConfig

    def __init__(self, config: ChesFilterConfig):
        super().__init__(config)
        self.fit_columns = ("id", config.score)

    @property
    def whole_input(self) -> bool:
        return self.config.rule != "drop_above" and not self.config.per_shard

    def fit(self, view: pa.Table, ctx: BuildContext) -> dict[str, Any]:
        """The rule's cut: the last dropped (score, id) in (score descending, id) order."""
        c = self.config
        frame = pl.from_arrow(view.select(["id", c.score]))
        scored = frame.filter(pl.col(c.score).is_not_null())
        n = scored.height
        if c.rule == "drop_above":
            return {"rule": c.rule, "rows": n, "threshold": c.threshold}
        k = n - round(c.share * n) if c.rule == "keep_lowest" else round(c.share * n)
        last = None
        if k:
            row = scored.sort([c.score, "id"], descending=[True, False]).row(k - 1)
            last = [row[1], row[0]]
        return {"rule": c.rule, "rows": n, "dropped": k, "last_dropped": last}

    def apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> StageOutput:
        c = self.config
        frame = pl.from_arrow(table.select(["id", c.score])).with_row_index("row")
        score = pl.col(c.score)
        if c.rule == "drop_above":
            dropped = frame.filter(score.is_not_null() & (score > c.threshold))
            why = f"above the threshold {c.threshold:g}"
        else:
            last = fitted["last_dropped"]
            dropped = frame.filter(score.is_not_null() & ((score > last[0]) | ((score == last[0]) & (pl.col("id") <= last[1]))))\
                if last is not None else frame.clear()
            why = f"among the highest {fitted['dropped']} of {fitted['rows']} scored rows ({c.rule}, share {c.share:g})"
        drop_rows = {r: (RejectReason.CHES_HIGH, f"{c.score}={s:.6g} {why}") for r, s in dropped.select(["row", c.score]).iter_rows()}
        nulls = frame.filter(score.is_null())["row"].to_list()
        counters: Counter = Counter()
        if c.nulls == "drop":
            drop_rows.update({r: (RejectReason.CHES_NULL, f"{c.score} is null") for r in nulls})
        else:
            counters["ches_null_kept"] += len(nulls)
        rejects = []
        if drop_rows:
            rows = sorted(drop_rows)
            ids = table.column("id").take(pa.array(rows, type=pa.int64())).to_pylist()
            for r, row_id, payload in zip(rows, ids, row_payloads(table, rows)):
                reason, detail = drop_rows[r]
                rejects.append(Reject(stage=self.name, reason=reason, detail=detail, row_id=row_id,
                                      field=c.score, payload=payload))
        keep_mask = np.ones(table.num_rows, dtype=bool)
        keep_mask[list(drop_rows)] = False
        return StageOutput(table.filter(pa.array(keep_mask)), rejects, counters)
