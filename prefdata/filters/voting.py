"""Multi-RM voting strength: how strongly an ensemble of M scorers agrees with each pair's label.

Secrets of RLHF in Large Language Models Part II: Reward Modeling (Wang et al. 2024, arXiv
2401.06080), Section 3. With d_im = r_m(x_i, y+_i) - r_m(x_i, y-_i) the margin of member m on pair
i (the `member_margins` list column the `score` and `embedding_rm` stages write; for a pairwise
judge, the log-odds that chosen is better):

    strength_mean_i = mean_m d_im,    strength_std_i = sqrt(mean_m (d_im - strength_mean_i)^2)  (population)

Null members are left out of both; a pair with no member margin gets null strength and no
bucket (counted as `voting_unscored`, kept). The paper buckets pairs by strength: the lowest
~20% `incorrect` (labels likely wrong), the next ~20% `ambiguous`, the rest `normal`; treatments:
flip incorrect, drop ambiguous, adaptive margin (loss -log sigma(Delta - strength_mean)).

Score, then decide. Scoring adds `strength_mean`, `strength_std`, `bucket`. Deciding (the
`decide` table: one action per bucket, `keep` everywhere = inspect only) flips, drops or keeps;
flipped pairs get `flipped = true`; dropped pairs go to rejects (`ambiguous_preference`,
`incorrect_preference`); counts per bucket and action land in stats.json, and the cut points
under `estimates.voting`.

**Decisions.**
- Quantile buckets are by rank, not by cut value: sorted by (strength_mean, id), the first
  floor(q_incorrect * n) pairs are incorrect and the pairs up to floor(q_ambiguous * n)
  ambiguous, so "lowest 20%" is exactly 20% whatever the ties; `mode = "threshold"` uses fixed
  cut points instead (strength_mean < incorrect_below, < ambiguous_below).
- Quantiles are over the whole input, whatever the shards: the stage is map -> fit -> apply
  (`WholeInputStage`). `score` adds `strength_mean`/`strength_std` per shard; `fit` ranks the
  (id, strength_mean) view of all shards once and keeps the last (strength_mean, id) of the
  incorrect and of the ambiguous bucket; `apply` buckets each row by comparing its (strength_mean,
  id) with those two keys, so a row's bucket is the one a single table would give it.
  `per_shard = true` ranks each shard alone instead (the counter `voting_tables` counts the
  tables ranked).
- A flip swaps every chosen/rejected column pair (`chosen`/`rejected`, `chosen_score`,
  `chosen_scores`, `ref_chosen_logps`, ...) and negates `member_margins`, `strength_mean` and
  `margin`, so every column keeps describing the pair as stored; `bucket` stays `incorrect`.
- `write_margin` sets `margin` = strength_mean (after any flip): the adaptive margin of the
  trainer's `margin` loss.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import StageOutput, WholeInputStage
from prefdata.schemas.errors import Reject, row_payloads
from prefdata.schemas.pair import put_column
from prefdata.scorers.ensemble import CITATION as ENSEMBLE_CITATION
from prefdata.types import RejectReason

CITATION = ENSEMBLE_CITATION  # the same paper defines member margins and voting strength

MEMBER_MARGINS = "member_margins"
STRENGTH_MEAN, STRENGTH_STD, BUCKET, FLIPPED = "strength_mean", "strength_std", "bucket", "flipped"
INCORRECT, AMBIGUOUS, NORMAL = "incorrect", "ambiguous", "normal"
Action = Literal["keep", "flip", "drop"]


class VotingDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    incorrect: Action = Field("flip", description="What to do with pairs in the `incorrect` bucket")
    ambiguous: Action = Field("drop", description="What to do with pairs in the `ambiguous` bucket")
    normal: Action = Field("keep", description="What to do with pairs in the `normal` bucket")
    write_margin: bool = Field(True, description="Set `margin` = strength_mean (after flips), for the adaptive-margin loss")


class VotingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["voting"] = "voting"
    column: str = Field(MEMBER_MARGINS, description="List column of per-member margins d_m")
    mode: Literal["quantile", "threshold"] = Field("quantile", description="Bucket by rank share or by fixed strength cut points")
    incorrect_quantile: float = Field(0.2, ge=0, le=1, description="quantile mode: share of lowest-strength pairs marked incorrect")
    ambiguous_quantile: float = Field(0.4, ge=0, le=1, description="quantile mode: cumulative share up to which pairs are ambiguous")
    incorrect_below: float = Field(0.0, description="threshold mode: strength_mean below this is incorrect")
    ambiguous_below: float = Field(0.0, description="threshold mode: strength_mean below this (and not incorrect) is ambiguous")
    decide: VotingDecision = Field(default_factory=VotingDecision, description="Action per bucket (all `keep` = score only)")
    per_shard: bool = Field(False, description="quantile mode: rank each shard alone instead of the whole input")

    @model_validator(mode="after")
    def _ordered(self) -> VotingConfig:
        if self.incorrect_quantile > self.ambiguous_quantile:
            raise ValueError("incorrect_quantile must be <= ambiguous_quantile (the latter is cumulative)")
        if self.incorrect_below > self.ambiguous_below:
            raise ValueError("incorrect_below must be <= ambiguous_below")
        return self


def strength(table: pa.Table, column: str = MEMBER_MARGINS) -> pl.DataFrame:
    """Per-row `strength_mean`, `strength_std` (population) over the non-null, finite members, and `members`."""
    frame = pl.from_arrow(table.select(["id", column]))
    if not isinstance(frame, pl.DataFrame):
        frame = frame.to_frame()
    d = pl.col(column).list.eval(pl.element().filter(pl.element().is_not_null() & pl.element().is_finite()))
    return frame.with_columns(d.alias("_d")).select(
        "id",
        pl.col("_d").list.mean().alias(STRENGTH_MEAN),
        pl.col("_d").list.eval(pl.element().std(ddof=0)).list.first().alias(STRENGTH_STD),
        pl.col("_d").list.len().fill_null(0).alias("members"))


def assign_buckets(scores: pl.DataFrame, config: VotingConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Add `bucket` (null where strength is null) and return the cut points used."""
    scored = scores.with_row_index("_row")
    valid = scored.filter(pl.col(STRENGTH_MEAN).is_not_null())
    n = valid.height
    if config.mode == "quantile":
        n_incorrect = math.floor(config.incorrect_quantile * n + 1e-9)
        n_ambiguous = math.floor(config.ambiguous_quantile * n + 1e-9)
        ranked = valid.sort([STRENGTH_MEAN, "id"]).with_row_index("_rank")
        ranked = ranked.with_columns(
            pl.when(pl.col("_rank") < n_incorrect).then(pl.lit(INCORRECT))
            .when(pl.col("_rank") < n_ambiguous).then(pl.lit(AMBIGUOUS))
            .otherwise(pl.lit(NORMAL)).alias(BUCKET))
        means = ranked[STRENGTH_MEAN].to_numpy()
        cuts = {"mode": "quantile", "rows": n, "incorrect_quantile": config.incorrect_quantile,
                "ambiguous_quantile": config.ambiguous_quantile,
                "incorrect_max": float(means[n_incorrect - 1]) if n_incorrect else None,
                "ambiguous_max": float(means[n_ambiguous - 1]) if n_ambiguous > n_incorrect else None}
    else:
        ranked = valid.with_columns(
            pl.when(pl.col(STRENGTH_MEAN) < config.incorrect_below).then(pl.lit(INCORRECT))
            .when(pl.col(STRENGTH_MEAN) < config.ambiguous_below).then(pl.lit(AMBIGUOUS))
            .otherwise(pl.lit(NORMAL)).alias(BUCKET))
        cuts = {"mode": "threshold", "rows": n, "incorrect_below": config.incorrect_below,
                "ambiguous_below": config.ambiguous_below}
    out = scored.join(ranked.select("_row", BUCKET), on="_row", how="left").sort("_row").drop("_row")
    return out, cuts


def fit_cuts(view: pa.Table, config: VotingConfig) -> dict[str, Any]:
    """The cut points of the whole input from its (id, strength_mean) view: in quantile mode the last
    (strength_mean, id) of the incorrect and of the ambiguous bucket (ranks as in `assign_buckets`)."""
    frame = pl.from_arrow(view.select(["id", STRENGTH_MEAN]))
    valid = frame.filter(pl.col(STRENGTH_MEAN).is_not_null())
    n = valid.height
    if config.mode != "quantile":
        return {"mode": "threshold", "rows": n, "incorrect_below": config.incorrect_below,
                "ambiguous_below": config.ambiguous_below}
    n_incorrect = math.floor(config.incorrect_quantile * n + 1e-9)
    n_ambiguous = math.floor(config.ambiguous_quantile * n + 1e-9)
    ranked = valid.sort([STRENGTH_MEAN, "id"])
    means, ids = ranked[STRENGTH_MEAN].to_list(), ranked["id"].to_list()
    last = {"incorrect_last": [means[n_incorrect - 1], ids[n_incorrect - 1]] if n_incorrect else None,
            "ambiguous_last": [means[n_ambiguous - 1], ids[n_ambiguous - 1]] if n_ambiguous else None}
    return {"mode": "quantile", "rows": n, "incorrect_quantile": config.incorrect_quantile,
            "ambiguous_quantile": config.ambiguous_quantile,
            "incorrect_max": float(means[n_incorrect - 1]) if n_incorrect else None,
            "ambiguous_max": float(means[n_ambiguous - 1]) if n_ambiguous > n_incorrect else None, **last}


def _at_or_below(key: list | None) -> pl.Expr:
    """Rows whose (strength_mean, id) sorts at or before `key` (never, without a key)."""
    if key is None:
        return pl.lit(False)
    mean, ident = key
    return (pl.col(STRENGTH_MEAN) < mean) | ((pl.col(STRENGTH_MEAN) == mean) & (pl.col("id") <= ident))


def bucket_rows(table: pa.Table, cuts: dict[str, Any]) -> pa.Array:
    """`bucket` of each row of a scored table from the fitted cut points (null where strength is null)."""
    frame = pl.from_arrow(table.select(["id", STRENGTH_MEAN]))
    if cuts["mode"] == "quantile":
        incorrect, ambiguous = _at_or_below(cuts["incorrect_last"]), _at_or_below(cuts["ambiguous_last"])
    else:
        incorrect = pl.col(STRENGTH_MEAN) < cuts["incorrect_below"]
        ambiguous = pl.col(STRENGTH_MEAN) < cuts["ambiguous_below"]
    bucket = (pl.when(pl.col(STRENGTH_MEAN).is_null()).then(pl.lit(None, dtype=pl.String))
              .when(incorrect).then(pl.lit(INCORRECT)).when(ambiguous).then(pl.lit(AMBIGUOUS))
              .otherwise(pl.lit(NORMAL)))
    return pa.array(frame.select(bucket.alias(BUCKET))[BUCKET].to_list(), type=pa.string())


def add_strength(table: pa.Table, column: str = MEMBER_MARGINS) -> pa.Table:
    """The per-row scoring step: append `strength_mean` and `strength_std`."""
    scores = strength(table, column)
    for name in (STRENGTH_MEAN, STRENGTH_STD):
        table = put_column(table, name, pa.array(scores[name].to_list(), type=pa.float64()))
    return table


def score_table(table: pa.Table, config: VotingConfig) -> tuple[pa.Table, dict[str, Any]]:
    """The scoring step: append `strength_mean`, `strength_std`, `bucket` (rows in input order)."""
    scores, cuts = assign_buckets(strength(table, config.column), config)
    for name, kind in ((STRENGTH_MEAN, pa.float64()), (STRENGTH_STD, pa.float64()), (BUCKET, pa.string())):
        table = put_column(table, name, pa.array(scores[name].to_list(), type=kind))
    return table, cuts


def _negate(column: pa.ChunkedArray, mask: pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        rows = column.to_pylist()
        flipped = [None if r is None else [None if v is None else -v for v in r] if m else r
                   for r, m in zip(rows, mask.to_pylist())]
        return pa.array(flipped, type=column.type)
    return pc.if_else(mask, pc.negate(column), column)


def flip_rows(table: pa.Table, mask: pa.Array, column: str = MEMBER_MARGINS) -> pa.Table:
    """Swap chosen/rejected (every `*chosen*` column with its `*rejected*` twin) where `mask` is true,
    and negate the signed gap columns, so each column describes the pair as stored."""
    names = table.column_names
    for name in names:
        twin = name.replace("chosen", "rejected")
        if "chosen" in name and twin in names:
            a, b = table.column(name), table.column(twin)
            table = put_column(table, name, pc.if_else(mask, b, a))
            table = put_column(table, twin, pc.if_else(mask, a, b))
    for name in (column, STRENGTH_MEAN, "margin"):
        if name in names:
            table = put_column(table, name, _negate(table.column(name), mask))
    return table


def decide(table: pa.Table, config: VotingConfig, stage: str = "voting") -> tuple[pa.Table, list[Reject], Counter]:
    """The deciding step: flip, drop or keep each bucket; rejects and per-bucket/action counts."""
    counters: Counter = Counter()
    buckets = table.column(BUCKET).to_pylist()
    actions = [None if b is None else getattr(config.decide, b) for b in buckets]
    for b, a in zip(buckets, actions):
        counters[f"bucket_{b or 'unscored'}"] += 1
        counters[f"voting_{a}_{b}" if b else "voting_unscored"] += 1
    flip = pa.array([a == "flip" for a in actions], type=pa.bool_())
    table = flip_rows(table, flip, config.column)
    table = put_column(table, FLIPPED, flip)
    if config.decide.write_margin:
        mean = table.column(STRENGTH_MEAN)  # unscored rows keep the margin they had
        table = put_column(table, "margin", pc.if_else(pc.is_null(mean), table.column("margin"), mean)
                     if "margin" in table.column_names else mean)
    drop = np.array([a == "drop" for a in actions], dtype=bool)
    rejects = []
    if drop.any():
        reasons = {INCORRECT: RejectReason.INCORRECT_PREFERENCE, AMBIGUOUS: RejectReason.AMBIGUOUS_PREFERENCE,
                   NORMAL: RejectReason.NORMAL_PREFERENCE}
        rows = np.flatnonzero(drop).tolist()
        ids = table.column("id").take(pa.array(rows, type=pa.int64())).to_pylist()
        means = table.column(STRENGTH_MEAN).take(pa.array(rows, type=pa.int64())).to_pylist()
        for i, row_id, mean, payload in zip(rows, ids, means, row_payloads(table, rows)):
            rejects.append(Reject(stage=stage, reason=reasons[buckets[i]], row_id=row_id, field=STRENGTH_MEAN,
                                  detail=f"bucket {buckets[i]}: strength_mean {mean:.4g}", payload=payload))
        table = table.filter(pa.array(~drop))
    return table, rejects, counters


class VotingFilter(WholeInputStage):
    """Multi-RM voting strength (Wang et al. 2024): strength mean/std, buckets, flip/drop/margin."""

    name: ClassVar[str] = "voting"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", MEMBER_MARGINS)
    adds: ClassVar[tuple[str, ...]] = (STRENGTH_MEAN, STRENGTH_STD, BUCKET, FLIPPED)
    fit_columns: ClassVar[tuple[str, ...]] = ("id", STRENGTH_MEAN)
    config: VotingConfig

    def __init__(self, config: VotingConfig | None = None):
        super().__init__(config or VotingConfig())
        if self.config.column != MEMBER_MARGINS:
            self.reads = ("id", self.config.column)

    @property
    def whole_input(self) -> bool:
        return self.config.mode == "quantile" and not self.config.per_shard  # thresholds need no global view

    def score(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        return StageOutput(add_strength(table, self.config.column))

    def fit(self, view: pa.Table, ctx: BuildContext) -> dict[str, Any]:
        return fit_cuts(view, self.config)

    def fit_estimates(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return {"voting": {k: v for k, v in fitted.items() if not k.endswith("_last")}}

    def apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> StageOutput:
        table = put_column(table, BUCKET, bucket_rows(table, fitted))
        out, rejects, counters = decide(table, self.config, self.name)
        return StageOutput(out, rejects, counters)

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        out = super().process(table, ctx)  # one table ranked alone (per_shard, thresholds, by hand)
        out.counters["voting_tables"] += 1
        return out
