"""Score existing pairs with an ensemble of scorers; keep every member's score and an aggregate.

The `score` stage runs M members (any scorer: pointwise judge, verifier, reward model, implicit
reward, pairwise judge, ...) over a shard of pairs, each in one batched call. Per member m and
pair i it keeps

    chosen_scores[i][m], rejected_scores[i][m]  per-side scores (null for pairwise members)
    member_margins[i][m] = d_im                 s_m(chosen) - s_m(rejected), or for a pairwise
                                                judge the log-odds that chosen is better
    member_details[i][m]                        {name, error, extra: JSON of per-pair diagnostics}

in member order (the voting filter reads `member_margins`; Secrets of RLHF II, arXiv
2401.06080). A second `score` stage APPENDS its members to these lists, so stages compose into
one ensemble. The aggregate over all members is written to `chosen_score`, `rejected_score`
and `margin`:

    margin = agg_m c_im,   c_im = d_im                       (transform = "none")
                           c_im = u_m(chosen) - u_m(rejected) (transform = "logsig")

with agg = mean (optionally weighted), sum, median or min, and chosen_score/rejected_score the
same aggregate of the per-side values of the members that have them. With `transform =
"logsig"` each per-side score becomes u = logsig(s - r_ref(x)), r_ref the `reference_quantile`
of that member's scores of the distinct responses of the same prompt (`prompt_id`) in the
shard (Wang et al. 2024, arXiv 2402.00742; `prefdata.scorers.reward_transform`); `sum` then
is their AND-like combination. A pairwise member, which gives only d, is transformed as a
pointwise member that saw only this pair (`reward_transform.pair_margin`).

Nulls: a member that cannot score a pair leaves a null entry and its error code (counted per
member as `<index>:<name>.null.<code>`). `null_policy = "require_all"` makes the aggregate null
if any member is null; `"skip"` aggregates the members that scored (null only if none did). A
pair whose aggregate is null goes to the rejects (`null_score`, member errors in the detail)
unless `on_null = "keep"` leaves it, with null scores, for a later decision step. No score is
ever invented. Pairs are never reordered or flipped here: a negative margin is counted
(`margin_negative`), and deciding is a filter's job.

Stats: per member `<index>:<name>.scored`, null codes, and the member's own counters (a
pairwise judge's position consistency appears under `rates` in stats.json).

Decisions: per-side aggregates use the same members as the margin (those with a non-null
margin), so chosen_score and rejected_score always come from one set of members; with `mean` and
only pointwise members, margin = chosen_score - rejected_score. r_ref is computed per shard: the
pairs of one prompt come from one generator shard, so they are never split.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import Reject
from prefdata.schemas.pair import put_column
from prefdata.scorers import ScorerConfig, make_pair_scorer
from prefdata.scorers.base import PairBatch, PairScorer, PairScoreResult
from prefdata.scorers.reward_transform import pair_margin, per_prompt_references, transform
from prefdata.types import RejectReason

CITATION = """@article{wang2024secrets,
  title={Secrets of RLHF in Large Language Models Part II: Reward Modeling},
  author={Wang, Binghai and Zheng, Rui and Chen, Lu and Liu, Yan and Dou, Shihan and Huang, Caishuang and Shen, Wei and Jin, Senjie and Zhou, Enyu and Shi, Chenyu and others},
  journal={arXiv preprint arXiv:2401.06080},
  year={2024}
}"""

MEMBER_DETAIL_TYPE = pa.struct([pa.field("name", pa.string()), pa.field("error", pa.string()),
                                pa.field("extra", pa.string())])
LIST_COLUMNS: dict[str, pa.DataType] = {
    "chosen_scores": pa.list_(pa.float64()),
    "rejected_scores": pa.list_(pa.float64()),
    "member_margins": pa.list_(pa.float64()),
    "member_details": pa.list_(MEMBER_DETAIL_TYPE),
}
AGGREGATE_COLUMNS = ("chosen_score", "rejected_score", "margin")


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["score"] = "score"
    members: list[ScorerConfig] = Field(min_length=1, description="Scorers of the ensemble, in member order")  # type: ignore[valid-type]
    aggregate: Literal["mean", "sum", "median", "min"] = Field("mean", description="How member values combine into chosen_score/rejected_score/margin")
    weights: list[float] | None = Field(None, description="Per-member weights for mean/sum, one per member of the whole ensemble (earlier score stages' members first)")
    transform: Literal["none", "logsig"] = Field("none", description="logsig: u = logsig(s - r_ref(x)) per member before aggregating (Wang et al. 2024)")
    reference_quantile: float = Field(0.5, ge=0, le=1, description="r_ref(x): this quantile of a member's scores of the prompt's responses")
    null_policy: Literal["require_all", "skip"] = Field("require_all", description="require_all: any null member makes the aggregate null; skip: aggregate the members that scored")
    on_null: Literal["reject", "keep"] = Field("reject", description="A pair with a null aggregate: reject it (rejects.parquet) or keep it with null scores")

    @model_validator(mode="after")
    def _weights_fit(self) -> ScoreConfig:
        if self.weights is not None and self.aggregate not in ("mean", "sum"):
            raise ValueError(f"weights apply to mean and sum, not {self.aggregate}")
        if self.weights is not None and len(self.weights) < len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        return self


class Ensemble:
    """Pair scorers run one after another over the same batch; results in member order."""

    def __init__(self, members: Sequence[PairScorer]):
        self.members = list(members)

    def setup(self, ctx: BuildContext) -> None:
        for member in self.members:
            member.setup(ctx)

    def score_pairs(self, batch: PairBatch) -> list[PairScoreResult]:
        return [member.score_pairs(batch) for member in self.members]


def response_text(messages: Sequence[dict[str, str]]) -> str:
    """A response's text: its single assistant message, or all its messages' contents joined."""
    return "\n".join(m["content"] for m in messages)


def aggregate(values: Sequence[float], how: str, weights: Sequence[float] | None = None) -> float:
    if how == "median":
        return float(statistics.median(values))
    if how == "min":
        return float(min(values))
    w = list(weights) if weights is not None else [1.0] * len(values)
    total = sum(wi * v for wi, v in zip(w, values))
    return float(total / sum(w)) if how == "mean" else float(total)


def _list_column(table: pa.Table, name: str) -> list[list[Any]]:
    if name in table.column_names:
        return [list(v) if v is not None else [] for v in table.column(name).to_pylist()]
    return [[] for _ in range(table.num_rows)]


class ScoreStage(Stage):
    name: ClassVar[str] = "score"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt_id", "prompt", "chosen", "rejected")
    adds: ClassVar[tuple[str, ...]] = (*AGGREGATE_COLUMNS, *LIST_COLUMNS)
    config: ScoreConfig

    def __init__(self, config: ScoreConfig):
        super().__init__(config)
        self.members: list[PairScorer] = [make_pair_scorer(m) for m in config.members]  # the card cites these
        self.ensemble = Ensemble(self.members)

    def setup(self, ctx: BuildContext) -> None:
        self.ensemble.setup(ctx)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "members": [m.identity() for m in self.members]}

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        cfg = self.config
        rows = table.select(["prompt", "chosen", "rejected"]).to_pylist()
        chosen_text = [response_text(r["chosen"]) for r in rows]
        rejected_text = [response_text(r["rejected"]) for r in rows]
        references = table.column("reference").to_pylist() if "reference" in table.column_names else None
        batch = PairBatch([r["prompt"] for r in rows], chosen_text, rejected_text, references)
        results = self.ensemble.score_pairs(batch) if rows else [PairScoreResult([], [], [], []) for _ in self.members]

        lists = {name: _list_column(table, name) for name in LIST_COLUMNS}
        offset = len(lists["member_margins"][0]) if rows else 0
        counters: Counter = Counter()
        for m, (member, result) in enumerate(zip(self.members, results)):
            label = f"{offset + m}:{member.name}"
            counters[f"{label}.scored"] += sum(d is not None for d in result.margins)
            counters.update({f"{label}.null.{code}": k for code, k in result.error_counts().items()})
            counters.update({f"{label}.{key}": k for key, k in result.counters.items()})
            for i in range(len(rows)):
                lists["chosen_scores"][i].append(result.chosen[i])
                lists["rejected_scores"][i].append(result.rejected[i])
                lists["member_margins"][i].append(result.margins[i])
                extra = {key: values[i] for key, values in result.extra.items() if values[i] is not None}
                lists["member_details"][i].append({"name": member.name, "error": result.errors[i],
                                                   "extra": json.dumps(extra, sort_keys=True) if extra else None})

        prompt_keys = table.column("prompt_id").to_pylist()
        scores = self._aggregate(prompt_keys, chosen_text, rejected_text, lists)
        for name, values in lists.items():
            table = put_column(table, name, pa.array(values, type=LIST_COLUMNS[name]))
        for name, values in zip(AGGREGATE_COLUMNS, zip(*scores) if scores else ([], [], [])):
            table = put_column(table, name, pa.array(list(values), type=pa.float64()))

        null_rows = [i for i, (_, _, margin) in enumerate(scores) if margin is None]
        counters["null_aggregate"] += len(null_rows)
        counters["margin_negative"] += sum(s[2] is not None and s[2] < 0 for s in scores)
        counters["margin_tie"] += sum(s[2] == 0 for s in scores)
        rejects: list[Reject] = []
        if null_rows and cfg.on_null == "reject":
            ids = table.column("id").to_pylist()
            for i in null_rows:
                errors = ", ".join(f"{m}:{d['name']}={d['error']}"
                                   for m, d in enumerate(lists["member_details"][i]) if d["error"])
                rejects.append(Reject(self.name, RejectReason.NULL_SCORE, row_id=ids[i], field="margin",
                                      detail=f"no aggregate score ({cfg.null_policy}); member errors: {errors}",
                                      payload=table.slice(i, 1).to_pylist()[0]))
            keep = pa.array([s[2] is not None for s in scores])
            table = table.filter(keep)
        return StageOutput(table, rejects, counters)

    def _aggregate(self, prompt_keys: list[Any], chosen_text: list[str], rejected_text: list[str],
                   lists: dict[str, list[list[Any]]]) -> list[tuple[float | None, float | None, float | None]]:
        """(chosen_score, rejected_score, margin) per row over all members of the lists."""
        cfg = self.config
        n = len(prompt_keys)
        n_members = len(lists["member_margins"][0]) if n else 0
        if cfg.weights is not None and n and len(cfg.weights) != n_members:
            raise ValueError(f"score stage: {len(cfg.weights)} weights for an ensemble of {n_members} members "
                             "(earlier score stages' members count too)")
        chosen_u, rejected_u = self._transformed(prompt_keys, chosen_text, rejected_text, lists, n_members)
        out = []
        for i in range(n):
            margins = lists["member_margins"][i]
            present = [m for m in range(n_members) if margins[m] is not None]
            if not present or (cfg.null_policy == "require_all" and len(present) < n_members):
                out.append((None, None, None))
                continue
            contributions, sides = [], []
            for m in present:
                c, r = chosen_u[m][i], rejected_u[m][i]
                if c is not None and r is not None:
                    contributions.append(c - r)
                    sides.append(m)
                else:  # a pairwise member: only d
                    d = margins[m]
                    contributions.append(pair_margin(d, cfg.reference_quantile) if cfg.transform == "logsig" else d)
            weights = [cfg.weights[m] for m in present] if cfg.weights is not None else None
            margin = aggregate(contributions, cfg.aggregate, weights)
            if sides:
                side_weights = [cfg.weights[m] for m in sides] if cfg.weights is not None else None
                chosen = aggregate([chosen_u[m][i] for m in sides], cfg.aggregate, side_weights)
                rejected = aggregate([rejected_u[m][i] for m in sides], cfg.aggregate, side_weights)
            else:
                chosen = rejected = None
            out.append((chosen, rejected, margin))
        return out

    def _transformed(self, prompt_keys: list[Any], chosen_text: list[str], rejected_text: list[str],
                     lists: dict[str, list[list[Any]]], n_members: int) -> tuple[list[list[Any]], list[list[Any]]]:
        """Per member, the per-side values the aggregate uses: raw, or u = logsig(s - r_ref(x))."""
        n = len(prompt_keys)
        chosen = [[lists["chosen_scores"][i][m] for i in range(n)] for m in range(n_members)]
        rejected = [[lists["rejected_scores"][i][m] for i in range(n)] for m in range(n_members)]
        if self.config.transform == "none":
            return chosen, rejected
        q = self.config.reference_quantile
        for m in range(n_members):
            samples: dict[tuple[Any, str], float] = {}  # each distinct response of a prompt counts once
            for i in range(n):
                for text, value in ((chosen_text[i], chosen[m][i]), (rejected_text[i], rejected[m][i])):
                    if value is not None:
                        samples.setdefault((prompt_keys[i], text), value)
            refs = per_prompt_references([k for k, _ in samples], list(samples.values()), q)
            for side in (chosen, rejected):
                side[m] = [None if v is None else transform(v, refs[prompt_keys[i]]) for i, v in enumerate(side[m])]
        return chosen, rejected
