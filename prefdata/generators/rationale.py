"""Rationale-augmented pairs: a written reason why the chosen response is preferred.

Paper: Just et al. 2024, "Data-Centric Human Preference Optimization with Rationales"
(arXiv 2407.14477; code reds-lab/preference-learning-with-rationales). For each pair
(x, y+, y-) an LLM writes a rationale r; RDPO then trains on

    L = -logsig(beta * Delta) - logsig(gamma * log pi(r | x_rat)),

where x_rat is the conditioning prompt "Given the prompt: {x}. Which of the following
assistant's responses is more preferable and strictly follows the prompt question? Response
above: "{A}" or Response below: "{B}"?" (`prefdata.train.data.rationale_prompt`, the same text
the trainer uses, so what is generated here is what is trained on).

Works on any pair table: a `kind = "pairs"` or `"hh"` source (e.g. HH-RLHF) or the output of a
generator; it keeps the input's columns and rows it does not reject, and adds `rationale`,
`rationale_order` (`chosen_first` | `rejected_first`: which response x_rat shows above) and
`rationale_chosen_prob` (the conclusion check's probability that the rationale favours the
chosen response: 1.0 where the text names the chosen position itself, else the judge's).

Decisions:
* **Order.** The authors always showed the chosen response above (a position leak: "above" is
  always right). Here the order is drawn per pair from (recipe seed, pair id), uniformly, and
  stored in `rationale_order`.
* **Generation prompt.** x_rat followed by which response is preferred ("The preferred
  response is the one above/below") and a request for two or three sentences explaining why;
  the rationale is the writer's answer (the authors generate with the preference known too).
  A rationale cut off at `max_tokens` is trimmed to its last complete sentence; one that is
  empty after that is rejected (`rationale_empty`).
* **Conclusion check.** A judge engine reads x_rat, the rationale and the question "which
  response does the explanation say is better? 1 = above, 2 = below", primed with "Answer:";
  P(1) and P(2) are read from its next-token log-probabilities (`RatingReader`, exact for
  multi-token labels). If P(1) + P(2) < `min_conclusion_mass` the row is rejected
  (`rationale_no_verdict`); if the side with more probability is the rejected response's the
  row is rejected (`rationale_wrong_side`). `check_conclusion = false` skips the check.
  Before the judge, `stated_preference` reads what the text itself says: a sentence that names
  one position as the preferred one ("Response below is more preferable", "the first response is
  better", "I prefer the response above") decides on its own -- a rationale that names the
  rejected response is rejected (`rationale_wrong_side`) whatever the judge says, and one that
  names the chosen response passes; the judge decides only texts that name neither side or both
  (a small judge misreads explicit texts: it is position-biased).
* One generate call for all rationales of a shard, one judge pass for all conclusions; seeds
  derive from (recipe seed, pair id).
"""

from __future__ import annotations

import random
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
from prefdata.schemas.formats import (
    CHOSEN_FIRST,
    RATIONALE,
    RATIONALE_ORDER,
    REJECTED_FIRST,
    rationale_prompt,
)
from prefdata.scorers.judge import RatingReader
from prefdata.types import RejectReason

CITATION = """@article{just2024data,
  title={Data-Centric Human Preference Optimization with Rationales},
  author={Just, Hoang Anh and Jin, Ming and Sahu, Anit and Phan, Huy and Jia, Ruoxi},
  journal={arXiv preprint arXiv:2407.14477},
  year={2024}
}"""

WRITER_HINT = (
    "\n\nThe preferred response is the one {side}. In two or three sentences, explain why it is more preferable "
    "than the other response."
)
JUDGE_TEMPLATE = (
    "{question}\n\nHere is an explanation of which response is better:\n\"{rationale}\"\n\n"
    "Which response does the explanation say is better? Answer 1 for the response above or 2 for the response below."
)
ANSWER_PREFIX = "Answer:"
ABOVE, BELOW = 1, 2
CHOSEN_PROB = "rationale_chosen_prob"
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


class RationaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["rationale"] = "rationale"
    engine: str = Field("policy", description="Engine (under [engines]) that writes the rationales")
    judge_engine: str = Field("policy", description="Engine that reads which response a rationale concludes for")
    sampling: SamplingConfig = Field(SamplingConfig(temperature=0.7, max_tokens=128), description="Rationale sampling")
    check_conclusion: bool = Field(True, description="Reject rationales whose conclusion favours the rejected response")
    min_conclusion_mass: float = Field(0.05, ge=0, le=1,
                                       description="Reject (no verdict) when the judge gives answers 1 and 2 less probability than this")


_SIDE = r"(?P<side>above|below|first|second|top|bottom|1|2)"
_SIDE_WORD = r"(?P<side>above|below|first|second|top|bottom)"  # before "response": "the first response"
_GOOD = (r"(?:(?:much|far|clearly|slightly|the)\s+)?(?:more\s+\w+|better|best|preferred|preferable|superior|stronger|safer|"
         r"the\s+(?:right|correct|better|best)\s+(?:choice|one|answer))")
_STATED = (
    # "Response below is more preferable", "the response above is better", "the first response is preferred"
    re.compile(r"\b(?:the\s+)?(?:response|answer|reply|one|option)\s+" + _SIDE + r"\s+(?:is|was|seems|would\s+be|appears)"
               r"\s+(?:\w+\s+){0,2}?" + _GOOD, re.IGNORECASE),
    re.compile(r"\b(?:the\s+)?" + _SIDE_WORD + r"\s+(?:response|answer|reply|one|option)\s+"
               r"(?:is|was|seems|would\s+be|appears)\s+(?:\w+\s+){0,2}?" + _GOOD, re.IGNORECASE),
    # "the better response is the one below", "the preferred response is Response 2"
    re.compile(r"\b" + _GOOD + r"\s+(?:response|answer|reply|one|option|choice)\s+(?:is|would\s+be)\s+(?:the\s+)?"
               r"(?:(?:response|answer|reply|one|option)\s+)?" + _SIDE + r"\b", re.IGNORECASE),
    # "I prefer the response below", "I would choose Response above"
    re.compile(r"\bI\s+(?:would\s+)?(?:prefer|choose|pick|select)\s+(?:the\s+)?(?:response|answer|reply|one|option)\s+"
               + _SIDE + r"\b", re.IGNORECASE),
)
_POSITION = {"above": "above", "first": "above", "top": "above", "1": "above",
             "below": "below", "second": "below", "bottom": "below", "2": "below"}


def stated_preference(text: str) -> str | None:
    """'above' or 'below' when the rationale names exactly one position as the preferred response, else None.

    Negated statements ("is not better") are skipped; a text that names both positions is None."""
    named = set()
    for pattern in _STATED:
        for match in pattern.finditer(text):
            if re.search(r"\b(?:not|n't|never|less)\b", match.group(0), re.IGNORECASE):
                continue
            named.add(_POSITION[match.group("side").lower()])
    return named.pop() if len(named) == 1 else None


def conclusion_check(text: str, order: str, judge: tuple[float, float] | None) -> tuple[str, float | None, str]:
    """(verdict, P(favours chosen), reject detail). Verdicts: `stated_chosen` (the text names the chosen
    position: P = 1), `judged_chosen` (P = the judge's), `wrong_side` (the text names the rejected position, or
    the judge leans to it), `no_verdict` (no explicit side and no judge verdict)."""
    chosen_side = "above" if order == CHOSEN_FIRST else "below"
    judged = None
    if judge is not None:
        p_above, p_below = judge
        judged = (p_above if chosen_side == "above" else p_below) / (p_above + p_below)
    stated = stated_preference(text)
    if stated is not None and stated != chosen_side:
        return "wrong_side", judged, f"the text names the response {stated} (the rejected one) as preferred"
    if stated is not None:
        return "stated_chosen", 1.0, ""
    if judged is None:
        return "no_verdict", None, "the judge gave neither answer enough probability"
    if judged <= 0.5:
        return "wrong_side", judged, f"P(favours chosen) = {judged:.3f}"
    return "judged_chosen", judged, ""


def trim_to_sentence(text: str) -> str:
    """The text up to its last sentence end ('.', '!' or '?'), or '' if it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


class RationaleStage(Stage):
    name: ClassVar[str] = "rationale"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt", "chosen", "rejected")
    adds: ClassVar[tuple[str, ...]] = (RATIONALE, RATIONALE_ORDER, CHOSEN_PROB)
    config: RationaleConfig

    def __init__(self, config: RationaleConfig | None = None):
        super().__init__(config or RationaleConfig())
        self.engine: Any = None
        self.judge: Any = None
        self._reader: RatingReader | None = None

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)
        self.judge = ctx.engine(self.config.judge_engine)

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        cfg = self.config
        writer = ChatFormatter(self.engine.tokenizer)
        rows = table.to_pylist()
        rejects: list[Reject] = []
        counters: Counter = Counter()

        orders, questions, requests = [], [], []
        for row in rows:
            order = random.Random(ctx.seed_for(self.name, "order", row["id"])).choice((CHOSEN_FIRST, REJECTED_FIRST))
            question = rationale_prompt(row["prompt"], row["chosen"][-1]["content"], row["rejected"][-1]["content"], order)
            side = "above" if order == CHOSEN_FIRST else "below"
            hint = [{"role": "user", "content": question[0]["content"] + WRITER_HINT.format(side=side)}]
            orders.append(order)
            questions.append(question[0]["content"])
            requests.append(writer.prompt_ids(hint))
        counters.update(f"order_{o}" for o in orders)
        fits = [len(ids) + 1 <= self.engine.max_model_len for ids in requests]
        todo = [i for i, ok in enumerate(fits) if ok]
        params = [cfg.sampling.params(1, ctx.seed_for(self.name, "write", rows[i]["id"])) for i in todo]
        outputs = self.engine.generate([requests[i] for i in todo], params) if todo else []
        texts: dict[int, str] = {}
        for i, out in zip(todo, outputs):
            completion = out[0]
            text = completion.text.strip()
            if completion.finish_reason == "length":
                counters["rationale_trimmed"] += 1
                text = trim_to_sentence(text)
            if not text:
                rejects.append(self._reject(rows[i], RejectReason.RATIONALE_EMPTY, "empty rationale (after trimming a cut-off one)",
                                            completion.text, orders[i]))
                continue
            texts[i] = text
        for i in range(len(rows)):
            if not fits[i]:
                rejects.append(self._reject(rows[i], RejectReason.PROMPT_TOO_LONG,
                                            f"rationale prompt of {len(requests[i])} tokens", "", orders[i]))

        probs = self._conclusions(questions, texts, counters) if cfg.check_conclusion else {}
        kept, rationales, kept_orders, chosen_probs = [], [], [], []
        for i in sorted(texts):
            prob = None
            if cfg.check_conclusion:
                verdict, prob, detail = conclusion_check(texts[i], orders[i], probs.get(i))
                counters[f"conclusion_{verdict}"] += 1
                if verdict in ("wrong_side", "no_verdict"):
                    reason = RejectReason.RATIONALE_WRONG_SIDE if verdict == "wrong_side" else RejectReason.RATIONALE_NO_VERDICT
                    rejects.append(self._reject(rows[i], reason, detail, texts[i], orders[i]))
                    continue
            kept.append(i)
            rationales.append(texts[i])
            kept_orders.append(orders[i])
            chosen_probs.append(prob)
        out = table.take(pa.array(kept, type=pa.int64()))
        for name, values, kind in ((RATIONALE, rationales, pa.string()), (RATIONALE_ORDER, kept_orders, pa.string()),
                                   (CHOSEN_PROB, chosen_probs, pa.float64())):
            if name in out.column_names:
                out = out.drop_columns([name])
            out = out.append_column(pa.field(name, kind), pa.array(values, type=kind))
        return StageOutput(out, rejects, counters)

    def _conclusions(self, questions: list[str], texts: dict[int, str], counters: Counter) -> dict[int, tuple[float, float]]:
        """(P(above), P(below)) for each rationale, or absent when the judge gives them too little mass."""
        formatter = ChatFormatter(self.judge.tokenizer)
        if self._reader is None:
            self._reader = RatingReader(formatter, (ABOVE, BELOW), ANSWER_PREFIX)
        order = sorted(texts)
        prompts = [formatter.prompt_ids([{"role": "user", "content": JUDGE_TEMPLATE.format(question=questions[i], rationale=texts[i])}],
                                        assistant_prefix=ANSWER_PREFIX) for i in order]
        fits = [len(p) + 4 <= self.judge.max_model_len for p in prompts]
        counters["conclusion_too_long"] += fits.count(False)
        read = self._reader.read(self.judge, [p for p, ok in zip(prompts, fits) if ok]) if any(fits) else []
        results: dict[int, tuple[float, float]] = {}
        for i, dist in zip([i for i, ok in zip(order, fits) if ok], read):
            above, below = dist.get(ABOVE, 0.0), dist.get(BELOW, 0.0)
            if above + below >= max(self.config.min_conclusion_mass, 1e-12) and above != below:
                results[i] = (above, below)
        return results

    def _reject(self, row: dict, reason: RejectReason, detail: str, rationale: str, order: str) -> Reject:
        payload = {k: v for k, v in row.items() if k in ("id", "prompt_id", "prompt", "chosen", "rejected")}
        return Reject(self.name, reason, row_id=row["id"], field=RATIONALE, detail=detail,
                      payload={**payload, RATIONALE: rationale, RATIONALE_ORDER: order})
