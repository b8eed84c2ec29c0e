"""Reward-augmented relabelling: every scored pair becomes two score-conditioned pairs.

Paper: Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference Alignment of
LLMs" (arXiv 2410.08067). With scores s+ > s- of the chosen y+ and rejected y- (on a 1-10
scale), the pair (x, y+, y-) becomes

    copy A: goal(s+) + x,  chosen y+,  rejected y-     (y+ is what reaching s+ looks like)
    copy B: goal(s-) + x,  chosen y-,  rejected y+     (asked for s-, y- is the better fit)

where goal(s) is a system message asking for responses that implicitly reach overall score s.
The policy learns the whole quality range instead of pushing every rejected response down;
at inference it is asked for the top score. Headline: DPO on UltraFeedback for Qwen2-7B-It,
AlpacaEval-2 LC about 21.5 -> 31.

Reads pair rows (`id`, `prompt_id`, `prompt`, `chosen`, `rejected`, `chosen_score`,
`rejected_score`) from any source (a generator, an input file, `kind = "completions"`).
Writes 2 rows per kept pair (A then B). `chosen_score`/`rejected_score` are the goal-scale
scores of the response in that slot, so copy B has a negative `margin`: its preference comes
from the goal, not from the quality gap. Metadata: `source_pair_id`, `source` (the input's
source), `copy` (`goal_chosen` / `goal_rejected`), `goal_score`, `goal` (the printed number),
`variant`, `input_chosen_score`, `input_rejected_score` (before rescaling).

Decisions:
* Scores print as the authors' do: integers without ".0" (8, not 8.0). With `decimals` set
  (default 1), goals are rounded first, so 6.9999 prints 7.
* Ties are skipped (`tied_scores`), also when two different scores print the same goal: copies
  A and B would then carry one goal with opposite preferences. The authors keep s+ == s- pairs
  (their filter is `>=`). A pair whose chosen score is lower (`chosen_scored_lower`) or null
  (`missing_score`) is rejected too; the labels are never re-oriented by score here.
* `score_range = [lo, hi]` maps input scores linearly onto 1-10 (e.g. AlpacaEval preferences
  in [1, 2]); a score outside it is rejected (`score_out_of_range`), never clipped.
* `variant = "nosys"` puts the goal and a blank line at the start of the first user turn.
  The authors' nosys script never swaps the responses in copy B (it rewrites the user turn of
  both sides and leaves y+ chosen); prefdata swaps them in both variants.
* A prompt that already has a system message keeps it: the goal goes first, then a blank
  line, then the original system text (one system message, which every chat template accepts).
* New ids hash the source pair id, this stage's config and the copy; `prompt_id` stays the
  source's, so a split by prompt keeps both copies on one side.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import Reject
from prefdata.schemas.pair import CORE_PAIR_COLUMNS, make_pair_id, pair_schema
from prefdata.types import RejectReason, Role

CITATION = """@article{zhang2024reward,
  title={Reward-Augmented Data Enhances Direct Preference Alignment of LLMs},
  author={Zhang, Shenao and Liu, Zhihan and Liu, Boyi and Zhang, Yufeng and Yang, Yingxiang and Liu, Yongfei and Chen, Liyu and Sun, Tao and Wang, Zhaoran},
  journal={arXiv preprint arXiv:2410.08067},
  year={2024}
}"""

GOAL_TEMPLATE = (
    "You are an assistant that writes responses to the instruction while implicitly reaching the following "
    "target score (on a scale of 1-10, where 1 is the lowest and 10 the highest):\nOverall score: {score}."
)
GOAL_LOW, GOAL_HIGH = 1.0, 10.0
COPY_CHOSEN_GOAL, COPY_REJECTED_GOAL = "goal_chosen", "goal_rejected"

METADATA_TYPE = pa.struct([
    pa.field("source_pair_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("copy", pa.string()),
    pa.field("goal_score", pa.float64()),
    pa.field("goal", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("input_chosen_score", pa.float64()),
    pa.field("input_rejected_score", pa.float64()),
])


class RewardAugmentedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reward_augmented"] = "reward_augmented"
    variant: Literal["system", "nosys"] = Field(
        "system", description="system: the goal is a system message; nosys: it starts the first user turn")
    score_range: tuple[float, float] | None = Field(
        None, description="[lo, hi] of the input scores, mapped linearly onto the 1-10 goal scale (unset: already 1-10)")
    decimals: int | None = Field(1, ge=0, le=6, description="Round goal scores to this many decimals (unset: as they are)")
    template: str = Field(GOAL_TEMPLATE, description="Goal text with {score}")

    @field_validator("score_range")
    @classmethod
    def _distinct(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] == value[1]:
            raise ValueError("score_range needs two different ends")
        return value

    @field_validator("template")
    @classmethod
    def _has_score(cls, value: str) -> str:
        if "{score}" not in value:
            raise ValueError("template must contain {score}")
        return value


def format_score(value: float) -> str:
    """8.0 -> '8', 7.5 -> '7.5' (integers without '.0', as the authors print them)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def with_goal(prompt: list[dict[str, str]], goal: str, variant: str) -> list[dict[str, str]]:
    messages = [dict(m) for m in prompt]
    if variant == "nosys":
        first_user = next(i for i, m in enumerate(messages) if m["role"] == Role.USER.value)
        messages[first_user]["content"] = f"{goal}\n\n{messages[first_user]['content']}"
        return messages
    if messages and messages[0]["role"] == Role.SYSTEM.value:
        messages[0]["content"] = f"{goal}\n\n{messages[0]['content']}"
        return messages
    return [{"role": Role.SYSTEM.value, "content": goal}, *messages]


class RewardAugmentedGenerator(Stage):
    name: ClassVar[str] = "reward_augmented"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score")
    adds: ClassVar[tuple[str, ...]] = CORE_PAIR_COLUMNS
    replaces_columns: ClassVar[bool] = True
    config: RewardAugmentedConfig

    def __init__(self, config: RewardAugmentedConfig | None = None):
        super().__init__(config or RewardAugmentedConfig())

    def goal_score(self, score: float) -> float | None:
        """The input score on the 1-10 goal scale, rounded; None when outside `score_range`."""
        cfg = self.config
        if cfg.score_range is not None:
            lo, hi = cfg.score_range
            if not min(lo, hi) <= score <= max(lo, hi):
                return None
            score = GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * (score - lo) / (hi - lo)
        return round(score, cfg.decimals) if cfg.decimals is not None else score

    def _reject(self, row: dict, reason: RejectReason, detail: str, field: str | None = None) -> Reject:
        return Reject(self.name, reason, row_id=row["id"], field=field, detail=detail, payload=row)

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        cfg = self.config
        parameters = cfg.model_dump(mode="json")
        rejects: list[Reject] = []
        counters: Counter = Counter()
        out_rows: list[dict[str, Any]] = []
        has_source = "source" in table.column_names
        for row in table.to_pylist():
            s_pos, s_neg = row["chosen_score"], row["rejected_score"]
            missing = [n for n, s in (("chosen_score", s_pos), ("rejected_score", s_neg)) if s is None or not math.isfinite(s)]
            if missing:
                rejects.append(self._reject(row, RejectReason.MISSING_SCORE, "no usable score", missing[0]))
                continue
            g_pos, g_neg = self.goal_score(s_pos), self.goal_score(s_neg)
            if g_pos is None or g_neg is None:
                field = "chosen_score" if g_pos is None else "rejected_score"
                rejects.append(self._reject(row, RejectReason.SCORE_OUT_OF_RANGE,
                                            f"{row[field]} is outside score_range {list(cfg.score_range or ())}", field))
                continue
            goal_pos, goal_neg = format_score(g_pos), format_score(g_neg)
            if s_pos == s_neg or goal_pos == goal_neg:
                rejects.append(self._reject(row, RejectReason.TIED_SCORES,
                                            f"scores {s_pos} and {s_neg} give the same goal {goal_pos}"))
                continue
            if s_pos < s_neg:
                rejects.append(self._reject(row, RejectReason.CHOSEN_SCORED_LOWER,
                                            f"chosen_score {s_pos} < rejected_score {s_neg}", "chosen_score"))
                continue
            base_meta = {
                "source_pair_id": row["id"],
                "source": row["source"] if has_source else None,
                "variant": cfg.variant, "input_chosen_score": s_pos, "input_rejected_score": s_neg,
            }
            copies = (
                (COPY_CHOSEN_GOAL, g_pos, goal_pos, row["chosen"], row["rejected"], g_pos, g_neg),
                (COPY_REJECTED_GOAL, g_neg, goal_neg, row["rejected"], row["chosen"], g_neg, g_pos),
            )
            for copy, goal_score, goal, chosen, rejected, chosen_score, rejected_score in copies:
                out_rows.append({
                    "id": make_pair_id(row["id"], self.name, parameters, key=copy),
                    "prompt_id": row["prompt_id"],
                    "prompt": with_goal(row["prompt"], cfg.template.format(score=goal), cfg.variant),
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_score": chosen_score,
                    "rejected_score": rejected_score,
                    "margin": chosen_score - rejected_score,
                    "source": self.name,
                    "metadata": {**base_meta, "copy": copy, "goal_score": goal_score, "goal": goal},
                })
            counters["pairs_in_kept"] += 1
        counters["pairs_out"] = len(out_rows)
        return StageOutput(pa.Table.from_pylist(out_rows, schema=pair_schema(METADATA_TYPE)), rejects, counters)

