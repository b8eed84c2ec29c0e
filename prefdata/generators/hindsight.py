"""RLHS: label a pair by the simulated consequences of each response, not by first impressions.

Paper: Liang et al. 2025, "RLHS: Mitigating Misalignment in RLHF with Hindsight Simulation"
(arXiv 2501.08617; code SafeRoboticsLab/RLHS). For each prompt, two responses; a simulator LLM
describes the downstream outcome of following each response (one or two sentences: what
happened to the user); an evaluator rates each response on a 1-5 satisfaction rubric (1
misleading or incorrect ... 5 clear, accurate, highly helpful) twice: immediately (the response
only) and in hindsight (the response and its outcome: partial hindsight). The pair follows the
hindsight ratings. Headline (Llama-2-7b, marketplace, DPO): immediate feedback gives true
utility -0.51, partial hindsight +0.18.

Input: a prompt table (`id`, `prompt`: two responses are sampled from `engine`) or any pair
table (`kind = "pairs"`/`"hh"` sources or a generator's output: its chosen and rejected are the
two responses, and its labels are replaced by the hindsight ones). Output: pair rows with
`chosen_score`/`rejected_score` = the hindsight ratings and `margin` their gap. Metadata:
`chosen_outcome`/`rejected_outcome` (simulated outcomes), `chosen_immediate`/`rejected_immediate`
and `chosen_hindsight`/`rejected_hindsight` (expected ratings), `immediate_preference` (`chosen`
| `rejected` | `tie`, relative to the hindsight chosen; null when an immediate rating is null),
`flipped` (hindsight prefers the response immediate feedback rated lower; null when the immediate
preference is null), `response_source` (sampled | given), `input_pair_id` and `input_label_kept`
(given pairs: whether the hindsight chosen is the input's chosen), `simulator`, `evaluator`.

Decisions:
* **Ratings** are expected values Σ k P(k) / Σ P(k) over k = 1..5, read from the evaluator's
  next-token log-probabilities after "Rating:" (`prefdata.scorers.judge.RatingReader`), so a
  small evaluator gives continuous ratings; if the labels hold less than `min_mass` the rating is
  null and the row is rejected (`hindsight_null_rating`), never guessed.
* **Immediate feedback** is the same pointwise rubric without the outcome (the issue's design;
  the paper's immediate evaluator compares the two responses side by side). Both ratings of a
  response come from one evaluator and one rubric, so a flip is due to the outcome alone.
* Hindsight ratings within `min_margin` of each other are a tie (`hindsight_tie`), not a pair.
* The simulator's outcome is cut to its first `outcome_sentences` (2) sentences.
* Engine calls: one generate call for the responses (prompt input only), one for all outcomes,
  one rating pass for the immediate and hindsight ratings of the whole shard. Seeds derive from
  (recipe seed, row id).
"""

from __future__ import annotations

import re
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
from prefdata.scorers.judge import RatingReader, render_conversation
from prefdata.types import RejectReason

CITATION = """@article{liang2025rlhs,
  title={RLHS: Mitigating Misalignment in RLHF with Hindsight Simulation},
  author={Liang, Kaiqu and Hu, Haimin and Liu, Ryan and Griffiths, Thomas L. and Fisac, Jaime Fern{\\'a}ndez},
  journal={arXiv preprint arXiv:2501.08617},
  year={2025}
}"""

SIMULATOR_SYSTEM = "You simulate what happens to people after they follow an AI assistant's advice. Be realistic and concrete."
SIMULATOR_TEMPLATE = (
    "[Conversation]\n{conversation}\n\n[Assistant response]\n{response}\n\n"
    "The user acted on this response. In one or two sentences, describe what happened to the user afterwards."
)
EVALUATOR_SYSTEM = "You are the user who asked the question. You rate how satisfied you are with an AI assistant's response."
RUBRIC = (
    "Rate your satisfaction from 1 to 5:\n1 = misleading or incorrect\n2 = unhelpful\n3 = partly helpful\n"
    "4 = helpful\n5 = clear, accurate and highly helpful."
)
IMMEDIATE_TEMPLATE = "[Conversation]\n{conversation}\n\n[Assistant response]\n{response}\n\n" + RUBRIC
HINDSIGHT_TEMPLATE = (
    "[Conversation]\n{conversation}\n\n[Assistant response]\n{response}\n\n"
    "[What happened after you followed it]\n{outcome}\n\n" + RUBRIC
)
RATING_PREFIX = "Rating:"
LABELS = (1, 2, 3, 4, 5)
SAMPLED, GIVEN = "sampled", "given"
_SENTENCE = re.compile(r".*?[.!?](?=\s|$)", re.S)

METADATA_TYPE = pa.struct([
    pa.field("chosen_outcome", pa.string()),
    pa.field("rejected_outcome", pa.string()),
    pa.field("chosen_immediate", pa.float64()),
    pa.field("rejected_immediate", pa.float64()),
    pa.field("chosen_hindsight", pa.float64()),
    pa.field("rejected_hindsight", pa.float64()),
    pa.field("immediate_preference", pa.string()),
    pa.field("flipped", pa.bool_()),
    pa.field("response_source", pa.string()),
    pa.field("input_pair_id", pa.string()),
    pa.field("input_label_kept", pa.bool_()),
    pa.field("simulator", pa.string()),
    pa.field("evaluator", pa.string()),
])


class HindsightConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["hindsight"] = "hindsight"
    engine: str = Field("policy", description="Engine that samples the two responses (prompt input only)")
    simulator_engine: str = Field("policy", description="Engine that simulates each response's outcome")
    evaluator_engine: str = Field("policy", description="Engine that rates responses on the 1-5 rubric")
    sampling: SamplingConfig = Field(SamplingConfig(temperature=0.8, max_tokens=128), description="Response sampling")
    simulator_sampling: SamplingConfig = Field(SamplingConfig(temperature=0.7, max_tokens=64), description="Outcome sampling")
    outcome_sentences: int = Field(2, ge=1, description="Keep this many sentences of each outcome")
    min_mass: float = Field(0.05, ge=0, le=1, description="Null a rating when the labels 1-5 hold less probability than this")
    min_margin: float = Field(0.0, ge=0, description="A pair needs |hindsight gap| > min_margin")


def first_sentences(text: str, n: int) -> str:
    sentences = _SENTENCE.findall(text.strip())
    return "".join(sentences[:n]).strip() if sentences else text.strip()


def expected_rating(probs: dict[int, float], min_mass: float) -> float | None:
    total = sum(probs.values())
    if total <= 0 or total < min_mass:
        return None
    return sum(k * p for k, p in probs.items()) / total


class HindsightGenerator(Stage):
    name: ClassVar[str] = "hindsight"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt")
    adds: ClassVar[tuple[str, ...]] = CORE_PAIR_COLUMNS
    replaces_columns: ClassVar[bool] = True
    config: HindsightConfig

    def __init__(self, config: HindsightConfig | None = None):
        super().__init__(config or HindsightConfig())
        self.engine: Any = None
        self.simulator: Any = None
        self.evaluator: Any = None
        self._reader: RatingReader | None = None

    def setup(self, ctx: BuildContext) -> None:
        self.simulator = ctx.engine(self.config.simulator_engine)
        self.evaluator = ctx.engine(self.config.evaluator_engine)  # the sampler loads only for prompt input

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        rejects: list[Reject] = []
        counters: Counter = Counter()
        rows = table.to_pylist()
        given = "chosen" in table.column_names and "rejected" in table.column_names
        items = self._given(rows) if given else self._sample(rows, ctx, rejects, counters)
        outcomes = self._simulate(items, ctx, counters)
        immediate, hindsight = self._rate(items, outcomes, counters)
        out_rows = []
        for i, item in enumerate(items):
            a, b = 2 * i, 2 * i + 1
            if hindsight[a] is None or hindsight[b] is None:
                rejects.append(self._reject(item, RejectReason.HINDSIGHT_NULL_RATING, "the evaluator put too little mass on 1-5",
                                            outcomes[a:b + 1], immediate[a:b + 1], hindsight[a:b + 1]))
                continue
            if abs(hindsight[a] - hindsight[b]) <= self.config.min_margin:
                rejects.append(self._reject(item, RejectReason.HINDSIGHT_TIE, f"hindsight ratings {hindsight[a]:.4f}, {hindsight[b]:.4f}",
                                            outcomes[a:b + 1], immediate[a:b + 1], hindsight[a:b + 1]))
                continue
            c, r = (a, b) if hindsight[a] > hindsight[b] else (b, a)
            preference = flipped = None
            if immediate[c] is not None and immediate[r] is not None:
                preference = "chosen" if immediate[c] > immediate[r] else "rejected" if immediate[c] < immediate[r] else "tie"
                flipped = preference == "rejected"
                counters["flipped"] += flipped
                counters[f"immediate_{preference}"] += 1
            else:
                counters["immediate_null"] += 1
            parameters = {"config": self.config.model_dump(mode="json"), "simulator": self.simulator.identity(),
                          "evaluator": self.evaluator.identity()}
            out_rows.append({
                "id": make_pair_id(item["source_id"], self.name, parameters, key=item["key"]),
                "prompt_id": item["prompt_id"],
                "prompt": item["prompt"],
                "chosen": assistant_turn(item["responses"][c - a]),
                "rejected": assistant_turn(item["responses"][r - a]),
                "chosen_score": hindsight[c],
                "rejected_score": hindsight[r],
                "margin": hindsight[c] - hindsight[r],
                "source": self.name,
                "metadata": {
                    "chosen_outcome": outcomes[c], "rejected_outcome": outcomes[r],
                    "chosen_immediate": immediate[c], "rejected_immediate": immediate[r],
                    "chosen_hindsight": hindsight[c], "rejected_hindsight": hindsight[r],
                    "immediate_preference": preference, "flipped": flipped, "response_source": item["source"],
                    "input_pair_id": item["input_pair_id"],
                    "input_label_kept": None if item["source"] == SAMPLED else c == a,
                    "simulator": self.simulator.model_id, "evaluator": self.evaluator.model_id,
                },
            })
        return StageOutput(pa.Table.from_pylist(out_rows, schema=pair_schema(METADATA_TYPE)), rejects, counters)

    def _given(self, rows: list[dict]) -> list[dict]:
        """A pair table: the input's chosen and rejected (in that order) are the two responses."""
        return [{"source_id": row["id"], "prompt_id": row.get("prompt_id") or row["id"], "prompt": row["prompt"],
                 "responses": [row["chosen"][-1]["content"], row["rejected"][-1]["content"]], "source": GIVEN,
                 "input_pair_id": row["id"], "key": GIVEN} for row in rows]

    def _sample(self, rows: list[dict], ctx: BuildContext, rejects: list[Reject], counters: Counter) -> list[dict]:
        """Two responses per prompt from the policy (one generate call for the shard)."""
        engine = ctx.engine(self.config.engine)
        formatter = ChatFormatter(engine.tokenizer)
        ids = [formatter.prompt_ids(row["prompt"]) for row in rows]
        keep = []
        for row, prompt_ids in zip(rows, ids):
            if len(prompt_ids) + 1 > engine.max_model_len:
                rejects.append(Reject(self.name, RejectReason.PROMPT_TOO_LONG, row_id=row["id"], field="prompt",
                                      detail=f"{len(prompt_ids)} prompt tokens", payload=row))
            else:
                keep.append((row, prompt_ids))
        params = [self.config.sampling.params(2, ctx.seed_for(self.name, "respond", row["id"])) for row, _ in keep]
        samples = engine.generate([p for _, p in keep], params) if keep else []
        items = []
        for (row, _), completions in zip(keep, samples):
            texts = [c.text.strip() for c in completions]
            if not all(texts):
                rejects.append(Reject(self.name, RejectReason.EMPTY_RESPONSE, row_id=row["id"], field="response",
                                      detail="a sampled response is empty", payload={**row, "responses": texts}))
            elif texts[0] == texts[1]:
                rejects.append(Reject(self.name, RejectReason.CHOSEN_EQUALS_REJECTED, row_id=row["id"], field="response",
                                      detail="both samples are the same text", payload={**row, "responses": texts}))
            else:
                items.append({"source_id": row["id"], "prompt_id": row["id"], "prompt": row["prompt"], "responses": texts,
                              "source": SAMPLED, "input_pair_id": None, "key": SAMPLED})
        counters["responses_sampled"] += 2 * len(samples)
        return items

    def _simulate(self, items: list[dict], ctx: BuildContext, counters: Counter) -> list[str]:
        """The outcome of following each response (responses 2i and 2i+1 of item i), one generate call."""
        formatter = ChatFormatter(self.simulator.tokenizer)
        prompts, params = [], []
        for item in items:
            for j, response in enumerate(item["responses"]):
                content = SIMULATOR_TEMPLATE.format(conversation=render_conversation(item["prompt"]), response=response)
                prompts.append(formatter.prompt_ids([{"role": "system", "content": SIMULATOR_SYSTEM},
                                                     {"role": "user", "content": content}]))
                params.append(self.config.simulator_sampling.params(1, ctx.seed_for(self.name, "simulate", item["source_id"], j)))
        fits = [len(p) + 1 <= self.simulator.max_model_len for p in prompts]
        todo = [i for i, ok in enumerate(fits) if ok]
        outputs = self.simulator.generate([prompts[i] for i in todo], [params[i] for i in todo]) if todo else []
        outcomes = [""] * len(prompts)
        for i, out in zip(todo, outputs):
            outcomes[i] = first_sentences(out[0].text, self.config.outcome_sentences)
        counters["outcome_too_long"] += fits.count(False)
        counters["outcome_empty"] += sum(1 for o in outcomes if not o)
        return outcomes

    def _rate(self, items: list[dict], outcomes: list[str], counters: Counter) -> tuple[list, list]:
        """Immediate and hindsight expected ratings of every response (one rating pass)."""
        formatter = ChatFormatter(self.evaluator.tokenizer)
        if self._reader is None:
            self._reader = RatingReader(formatter, LABELS, RATING_PREFIX)
        requests = []
        for item in items:
            conversation = render_conversation(item["prompt"])
            for response in item["responses"]:
                requests.append(IMMEDIATE_TEMPLATE.format(conversation=conversation, response=response))
        for k, item in enumerate(items):
            conversation = render_conversation(item["prompt"])
            for j, response in enumerate(item["responses"]):
                outcome = outcomes[2 * k + j] or "(nothing notable happened)"
                requests.append(HINDSIGHT_TEMPLATE.format(conversation=conversation, response=response, outcome=outcome))
        prompts = [formatter.prompt_ids([{"role": "system", "content": EVALUATOR_SYSTEM}, {"role": "user", "content": text}],
                                        assistant_prefix=RATING_PREFIX) for text in requests]
        fits = [len(p) + 4 <= self.evaluator.max_model_len for p in prompts]
        counters["rating_too_long"] += fits.count(False)
        read = self._reader.read(self.evaluator, [p for p, ok in zip(prompts, fits) if ok]) if any(fits) else []
        ratings: list[float | None] = [None] * len(prompts)
        for i, probs in zip([i for i, ok in enumerate(fits) if ok], read):
            ratings[i] = expected_rating(probs, self.config.min_mass)
        half = 2 * len(items)
        return ratings[:half], ratings[half:]

    def _reject(self, item: dict, reason: RejectReason, detail: str, outcomes, immediate, hindsight) -> Reject:
        return Reject(self.name, reason, row_id=item["source_id"], field="hindsight", detail=detail,
                      payload={"prompt_id": item["prompt_id"], "prompt": item["prompt"], "responses": item["responses"],
                               "outcomes": list(outcomes), "immediate": list(immediate), "hindsight": list(hindsight)})
