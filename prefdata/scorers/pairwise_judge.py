"""Pairwise LLM judge (A/B), run in both orders so that position bias cancels instead of deciding.

Paper: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena" (arXiv
2306.05685), Sec. 3.3-3.4: judges prefer a position; swap the two answers and keep a verdict
only if it survives the swap (or count a disagreement as a tie).

Each pair is judged twice, chosen shown as A (order AB) and chosen shown as B (order BA). The
judge's answer is primed with "Better response:" and the verdict is read from its next-token
log-probabilities of the two label tokens " A" and " B":

    p_AB = P(A) / (P(A) + P(B))         in order AB  (chosen is A)
    p_BA = P(B) / (P(A) + P(B))         in order BA  (chosen is B: the label is un-swapped)

both are P(chosen better). Reconciliation (`reconcile`):
* `average` (default): p = (p_AB + p_BA) / 2, d = logit(p). A judge that always answers "A"
  gets p_AB ~ 1 and p_BA ~ 0, so p ~ 1/2 and d ~ 0: its bias cancels.
* `consistent`: a verdict counts only if both orders pick the same response (p_AB and p_BA on
  the same side of 1/2); then d = (logit p_AB + logit p_BA) / 2, else null with error code
  `position_inconsistent`. A judge that always answers "A" yields no verdict at all.

d is the log-odds that chosen is better (the `member_margins` entry). Per-order probabilities
and verdicts ("chosen"/"rejected"/"tie") go to the result's extras; the counters give the
position-consistency rate (pairs whose two orders agree / pairs judged in both orders) and how
often the first position won.

Decisions: open-instruct's swap never un-swaps (its condition is always false) and DataDreamer
turns an unreadable verdict into a random label; here an order whose label tokens hold less
than `min_mass` of the probability makes the pair null (`no_score_tokens`), never a guess. A
label token outside the engine's top-k alternatives gets the k-th alternative's probability, an
upper bound, so d stays finite and errs toward "unsure" rather than overconfident. Both labels
must be single tokens after the prefix (checked when the judge first runs).

Mode `text` (for engines without log-probs, e.g. a hosted API): the judge is asked for a strict
format, "Better response: A" or "Better response: B" (`text_format`, appended to its message),
answers greedily, and `parse_verdict` reads the letter tolerantly ("Better response: **B**",
"Response A", a bare "A."). Still both orders, un-swapped: each order gives P(chosen better)
1 or 0, and d is the mean of the two votes +1 (chosen) / -1 (rejected), so d is in {-1, 0, 1}
(`average`; a judge that always answers "A" gets 0) or +-1 when both orders agree
(`consistent`). An answer with no readable letter makes the pair null (`unparseable_verdict`),
never a guess. Mode `auto` (default) is `logprobs` when the engine returns log-probs, else `text`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines import has_logprobs
from prefdata.engines.base import ContextLengthError, SamplingParams
from prefdata.engines.chat import ChatFormatter, common_prefix_length
from prefdata.scorers.base import PairBatch, PairScorer, PairScoreResult
from prefdata.scorers.judge import CITATION, POINTWISE_SYSTEM, TOP_LOGPROBS, render_conversation
from prefdata.types import Chat, ScoreError

if TYPE_CHECKING:
    from prefdata.engines.base import Engine
    from prefdata.pipeline.context import BuildContext

PAIRWISE_TEMPLATE = (
    "Compare two assistant responses to the conversation below.\n\n[Conversation]\n{conversation}\n\n"
    "[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\n"
    "Which response is more helpful, correct and harmless? Answer with a single letter: A or B."
)
VERDICT_PREFIX = "Better response:"
LABELS = ("A", "B")
TEXT_FORMAT = 'Reply in exactly this format, and nothing else: "Better response: A" or "Better response: B".'
TEXT_MAX_TOKENS = 16
_LETTER_AFTER_LABEL = re.compile(r"(?i:better\s+response)\s*(?:is)?\s*[:=\-]?\s*[*\"'\[(]*\s*(?:(?i:response)\s+)?([AB])\b")
_LETTER_NAMED = re.compile(r"\b(?i:response|assistant|answer)\s+([AB])\b")
_BARE_LETTER = re.compile(r"(?:(?i:response)\s+)?([AB])")


def parse_verdict(text: str) -> str | None:
    """"A", "B" or None: "Better response: X" first, then a bare letter, then "Response X" when only
    one letter is named."""
    match = _LETTER_AFTER_LABEL.search(text)
    if match:
        return match.group(1)
    match = _BARE_LETTER.fullmatch(text.strip().strip("*\"'.`:()[] \n"))
    if match:
        return match.group(1)
    named = set(_LETTER_NAMED.findall(text))
    return named.pop() if len(named) == 1 else None


class PairwiseJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["pairwise_judge"] = "pairwise_judge"
    engine: str = Field("policy", description="Name of the engine (under [engines]) that judges")
    mode: Literal["auto", "logprobs", "text"] = Field(
        "auto", description="logprobs: P(A) vs P(B) from next-token log-probs; text: parse 'Better response: X' "
                            "from the generated answer; auto: logprobs when the engine returns them, else text")
    reconcile: Literal["average", "consistent"] = Field(
        "average", description="average: logit of the mean P(chosen better) over both orders; "
                               "consistent: keep only verdicts both orders agree on (else null)")
    min_mass: float = Field(0.05, ge=0, le=1, description="Null the pair if the labels A and B hold less probability than this in either order")
    system_prompt: str = Field(POINTWISE_SYSTEM, description="Judge system message")
    template: str = Field(PAIRWISE_TEMPLATE, description="Judge user message with {conversation}, {response_a} and {response_b}")
    prefix: str = Field(VERDICT_PREFIX, description="Start of the judge's answer; the label token follows it (logprobs mode)")
    text_format: str = Field(TEXT_FORMAT, description="text mode: the answer format, appended to the judge's user message")


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def label_token_ids(formatter: ChatFormatter, prefix: str, labels: Sequence[str]) -> list[int]:
    """The single token each label is after `prefix` + a space, in the context of a chat."""
    probe = [{"role": "user", "content": "x"}]
    base = formatter.prompt_ids(probe, assistant_prefix=prefix)
    tokens = []
    for label in labels:
        ids = formatter.prompt_ids(probe, assistant_prefix=f"{prefix} {label}")
        cut = common_prefix_length(base, ids)
        if cut != len(base) or len(ids) - cut != 1:
            raise ValueError(f"verdict label {label!r} is not one token after the prefix {prefix!r}")
        tokens.append(ids[cut])
    return tokens


class PairwiseJudge(PairScorer):
    name: ClassVar[str] = "pairwise_judge"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: PairwiseJudgeConfig | None = None, engine: Engine | None = None):
        self.config = config or PairwiseJudgeConfig()
        self.engine = engine
        self._labels: list[int] | None = None

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)

    def mode(self) -> str:
        """The mode this judge runs in with its engine (`auto` resolved)."""
        if self.config.mode != "auto":
            return self.config.mode
        return "logprobs" if has_logprobs(self.engine) else "text"

    def judge_messages(self, prompt: Chat, response_a: str, response_b: str, text_mode: bool = False) -> Chat:
        content = self.config.template.format(conversation=render_conversation(prompt), response_a=response_a,
                                              response_b=response_b)
        if text_mode:
            content = f"{content}\n\n{self.config.text_format}"
        return [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": content}]

    def _label_probs(self, prompts: list[list[int]]) -> list[tuple[float, float]]:
        """(P(A), P(B)) after each prompt; a label outside the top-k gets the k-th probability."""
        if self._labels is None:
            self._labels = label_token_ids(ChatFormatter(self.engine.tokenizer), self.config.prefix, LABELS)
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, top_logprobs=TOP_LOGPROBS)
        out = []
        for completions in self.engine.generate(prompts, params):
            top = completions[0].top_logprobs[0]
            floor = min(top.values())
            in_top = [t in top for t in self._labels]
            if not any(in_top):
                out.append((0.0, 0.0))
                continue
            out.append(tuple(math.exp(top.get(t, floor)) for t in self._labels))
        return out

    def _text_votes(self, prompts: list[list[int]]) -> list[tuple[float, float] | None]:
        """(1, 0) for an answer "A", (0, 1) for "B", None when no letter can be read."""
        params = SamplingParams(n=1, temperature=0.0, max_tokens=TEXT_MAX_TOKENS)
        votes: list[tuple[float, float] | None] = []
        for completions in self.engine.generate(prompts, params):
            letter = parse_verdict(completions[0].text)
            votes.append(None if letter is None else (1.0, 0.0) if letter == "A" else (0.0, 1.0))
        return votes

    def score_pairs(self, batch: PairBatch) -> PairScoreResult:
        if self.engine is None:
            raise RuntimeError("pairwise judge has no engine: call setup() or pass engine=")
        n = len(batch)
        formatter = ChatFormatter(self.engine.tokenizer)
        text_mode = self.mode() == "text"
        prefix = "" if text_mode else self.config.prefix
        margins: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        extra: dict[str, list[Any]] = {k: [None] * n for k in ("p_chosen_ab", "p_chosen_ba", "verdict_ab", "verdict_ba")}
        todo, prompts = [], []
        for i in range(n):
            prompt, chosen, rejected = batch.prompts[i], batch.chosen[i], batch.rejected[i]
            if not chosen.strip() or not rejected.strip():
                errors[i] = ScoreError.EMPTY_RESPONSE.value
                continue
            pair = [formatter.prompt_ids(self.judge_messages(prompt, a, b, text_mode), assistant_prefix=prefix)
                    for a, b in ((chosen, rejected), (rejected, chosen))]
            try:
                self.engine.check_lengths(pair, extra=1)
            except ContextLengthError:
                errors[i] = ScoreError.TRUNCATED.value
                continue
            todo.append(i)
            prompts.extend(pair)
        reader = self._text_votes if text_mode else self._label_probs
        probs = reader(prompts) if prompts else []
        counters: Counter = Counter()
        for k, i in enumerate(todo):
            if probs[2 * k] is None or probs[2 * k + 1] is None:
                errors[i] = ScoreError.UNPARSEABLE_VERDICT.value
                continue
            (a_ab, b_ab), (a_ba, b_ba) = probs[2 * k], probs[2 * k + 1]
            if min(a_ab + b_ab, a_ba + b_ba) < max(self.config.min_mass, 1e-300):
                errors[i] = ScoreError.NO_SCORE_TOKENS.value
                continue
            p_ab, p_ba = a_ab / (a_ab + b_ab), b_ba / (a_ba + b_ba)  # both: P(chosen better), un-swapped
            verdict_ab, verdict_ba = _verdict(p_ab), _verdict(p_ba)
            consistent = verdict_ab == verdict_ba != "tie"
            extra["p_chosen_ab"][i], extra["p_chosen_ba"][i] = p_ab, p_ba
            extra["verdict_ab"][i], extra["verdict_ba"][i] = verdict_ab, verdict_ba
            counters["position_consistency__den"] += 1
            counters["position_consistency__num"] += consistent
            counters["first_position_won__den"] += 2
            counters["first_position_won__num"] += (p_ab > 0.5) + (p_ba < 0.5)  # A won in order AB; A won in BA
            if text_mode:  # votes +1 / -1 per order: log-odds of a hard verdict would be infinite
                if self.config.reconcile == "average" or consistent:
                    margins[i] = (2 * p_ab - 1 + 2 * p_ba - 1) / 2
                else:
                    errors[i] = ScoreError.POSITION_INCONSISTENT.value
            elif self.config.reconcile == "average":
                margins[i] = _finite_logit((p_ab + p_ba) / 2)
            elif consistent:
                margins[i] = (_finite_logit(p_ab) + _finite_logit(p_ba)) / 2
            else:
                errors[i] = ScoreError.POSITION_INCONSISTENT.value
        return PairScoreResult(margins, errors, [None] * n, [None] * n, extra, counters)

    def identity(self) -> dict[str, Any]:
        engine = self.engine.identity() if self.engine is not None else None
        return {"scorer": self.name, **self.config.model_dump(), "engine_identity": engine}


def _verdict(p_chosen: float) -> str:
    return "chosen" if p_chosen > 0.5 else "rejected" if p_chosen < 0.5 else "tie"


def _finite_logit(p: float) -> float:
    # p is a ratio of two positive probabilities (labels outside the top-k get the k-th one), so it
    # is strictly inside (0, 1) unless exp underflowed; clamp to the float range then.
    return logit(min(max(p, 1e-300), 1.0 - 1e-16))
