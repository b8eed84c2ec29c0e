"""Pointwise LLM judge: rates a response 1-10 through an engine.

Default mode `expected`: the judge's answer is primed with "Rating:" and the score is the
expected rating under the judge's own next-token distribution,

    score = sum_k k * P(k) / sum_k P(k),   k in 1..10,

read from the engine's log-probabilities rather than from sampled text, so even a 135M model
gives a continuous score and exact ties are rare. Ratings that take several tokens ("10" is
"1","0" for tokenizers that split digits) are handled exactly by walking a trie of the label
token sequences: P("1") is the mass of "1" that does *not* continue with "0". A rating token
outside the engine's top-k alternatives counts as zero mass (it is smaller than the k-th).
If the rating labels hold less than `min_mass` of the probability, the score is null
(`no_score_tokens`): the judge did not answer with a rating, and no number is made up.

Mode `text` (for engines without log-probs, e.g. a hosted API) asks for a strict format,
"Rating: N" (`text_format`, appended to the judge's message), samples the answer greedily and
reads it with a tolerant parser (`parse_rating`): "Rating: N" in any case, with markdown or
"/10" around it; else "N/10" or "N out of 10"; else an answer that is just the number. Text
without a rating in 1..10 gives null (`unparseable_verdict`), never a random or default label.
Mode `auto` (default) is `expected` when the engine returns log-probs and `text` when not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines import has_logprobs
from prefdata.engines.base import ContextLengthError, SamplingParams
from prefdata.engines.chat import ChatFormatter, common_prefix_length
from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.types import Chat, ScoreError

if TYPE_CHECKING:
    from prefdata.engines.base import Engine
    from prefdata.pipeline.context import BuildContext

POINTWISE_SYSTEM = (
    "You are a strict and fair evaluator of AI assistant responses. You rate how helpful, correct, "
    "relevant and clear a response is for the user's last message."
)
POINTWISE_TEMPLATE = (
    "Rate the assistant response below on a scale of 1 to 10, where 1 is useless or wrong and 10 is "
    "excellent.\n\n[Conversation]\n{conversation}\n\n[Assistant response]\n{response}\n\n"
    "Answer with a single number from 1 to 10."
)
RATING_PREFIX = "Rating:"
TEXT_FORMAT = 'Reply in exactly this format, and nothing else: "Rating: N", where N is a whole number from 1 to 10.'
TEXT_MAX_TOKENS = 16
_RATING_AFTER_LABEL = re.compile(r"(?i:rating)\s*(?:is)?\s*[:=\-]?\s*[*\"'\[(]*\s*(10|[1-9])(?:\.0)?(?!\d|\.\d)")
_RATING_OUT_OF_TEN = re.compile(r"(?<![\d.])(10|[1-9])(?:\.0)?\s*(?:/|out of)\s*10(?!\d)")
_BARE_RATING = re.compile(r"(10|[1-9])(?:\.0)?")
CITATION = """@inproceedings{zheng2023judging,
  title={Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena},
  author={Zheng, Lianmin and Chiang, Wei-Lin and Sheng, Ying and Zhuang, Siyuan and Wu, Zhanghao and Zhuang, Yonghao and Lin, Zi and Li, Zhuohan and Li, Dacheng and Xing, Eric P. and Zhang, Hao and Gonzalez, Joseph E. and Stoica, Ion},
  booktitle={Advances in Neural Information Processing Systems},
  year={2023},
  note={arXiv:2306.05685}
}"""
TOP_LOGPROBS = 20


def parse_rating(text: str) -> int | None:
    """The rating 1..10 in a judge's answer, or None: "Rating: N" first, then "N/10", then a bare N."""
    for pattern in (_RATING_AFTER_LABEL, _RATING_OUT_OF_TEN):
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    match = _BARE_RATING.fullmatch(text.strip().strip("*\"'.` \n"))
    return int(match.group(1)) if match else None


def render_conversation(messages: Chat) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    label: int | None = None  # the rating that ends at this node, if any


class RatingReader:
    """Reads a distribution over integer labels from next-token log-probs, label tokens in context."""

    def __init__(self, formatter: ChatFormatter, labels: Sequence[int], prefix: str):
        self.formatter, self.labels, self.prefix = formatter, list(labels), prefix
        probe = [{"role": "user", "content": "x"}]
        base = formatter.prompt_ids(probe, assistant_prefix=prefix)
        self.root = _Node()
        for label in self.labels:
            ids = formatter.prompt_ids(probe, assistant_prefix=f"{prefix} {label}")
            cut = common_prefix_length(base, ids)
            if cut != len(base):
                # The label merged with the end of the prefix: the distribution after the prefix
                # cannot express it, so the prefix must end on a token boundary.
                raise ValueError(f"rating prefix {prefix!r} does not end on a token boundary for label {label}")
            node = self.root
            for token in ids[cut:]:
                node = node.children.setdefault(token, _Node())
            node.label = label

    def _internal_paths(self) -> list[tuple[int, ...]]:
        paths, stack = [], [((), self.root)]
        while stack:
            path, node = stack.pop()
            if node.children:
                paths.append(path)
                stack.extend((path + (t,), child) for t, child in node.children.items())
        return sorted(paths, key=len)

    def read(self, engine: Engine, prompts: Sequence[Sequence[int]]) -> list[dict[int, float]]:
        """For each prompt (already ending with the prefix), P(label) for every label."""
        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, top_logprobs=TOP_LOGPROBS)
        paths = self._internal_paths()
        requests = [(row, path) for path in paths for row in range(len(prompts))]
        outputs = engine.generate([list(prompts[row]) + list(path) for row, path in requests], params)
        step = {(row, path): out[0].top_logprobs[0] for (row, path), out in zip(requests, outputs)}
        results = []
        for row in range(len(prompts)):
            probs: dict[int, float] = {}
            self._walk(self.root, (), 0.0, step, row, probs)
            results.append(probs)
        return results

    def _walk(self, node: _Node, path: tuple[int, ...], logp: float, step: dict, row: int, out: dict[int, float]) -> None:
        top = step.get((row, path), {})
        continuing = 0.0
        for token, child in node.children.items():
            child_logp = top.get(token, -math.inf)
            continuing += math.exp(child_logp)
            if child_logp > -math.inf:
                self._walk(child, path + (token,), logp + child_logp, step, row, out)
        if node.label is not None:
            out[node.label] = math.exp(logp) * max(0.0, 1.0 - continuing) if node.children else math.exp(logp)


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["judge"] = "judge"
    engine: str = Field("policy", description="Name of the engine (under [engines]) that judges")
    mode: Literal["auto", "expected", "text"] = Field(
        "auto", description="expected: E[rating] from log-probs; text: parse the generated 'Rating: N'; "
                            "auto: expected when the engine returns log-probs, else text")
    min_mass: float = Field(0.05, ge=0, le=1, description="Null the score if the ratings 1-10 hold less probability than this")
    system_prompt: str = Field(POINTWISE_SYSTEM, description="Judge system message")
    template: str = Field(POINTWISE_TEMPLATE, description="Judge user message with {conversation} and {response}")
    text_format: str = Field(TEXT_FORMAT, description="text mode: the answer format, appended to the judge's user message")


class PointwiseJudge(Scorer):
    name: ClassVar[str] = "judge"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: JudgeConfig | None = None, engine: Engine | None = None):
        self.config = config or JudgeConfig()
        self.engine = engine
        self._reader: RatingReader | None = None

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)

    def _formatter(self) -> ChatFormatter:
        if self.engine is None:
            raise RuntimeError("judge has no engine: call setup() or pass engine=")
        return ChatFormatter(self.engine.tokenizer)

    def mode(self) -> str:
        """The mode this judge runs in with its engine (`auto` resolved)."""
        if self.config.mode != "auto":
            return self.config.mode
        return "expected" if has_logprobs(self.engine) else "text"

    def judge_messages(self, prompt: Chat, response: str, text_mode: bool = False) -> Chat:
        content = self.config.template.format(conversation=render_conversation(prompt), response=response)
        if text_mode:
            content = f"{content}\n\n{self.config.text_format}"
        return [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": content}]

    def score(self, batch: ScoreBatch) -> ScoreResult:
        n = len(batch)
        values: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        mass: list[float | None] = [None] * n
        formatter = self._formatter()
        mode = self.mode()
        prefix = RATING_PREFIX if mode == "expected" else ""
        todo, prompts = [], []
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
            if not response.strip():
                errors[i] = ScoreError.EMPTY_RESPONSE.value
                continue
            ids = formatter.prompt_ids(self.judge_messages(prompt, response, text_mode=mode == "text"),
                                       assistant_prefix=prefix)
            try:
                self.engine.check_lengths([ids], extra=4)
            except ContextLengthError:
                errors[i] = ScoreError.TRUNCATED.value
                continue
            todo.append(i)
            prompts.append(ids)
        if mode == "expected":
            if self._reader is None:
                self._reader = RatingReader(formatter, range(1, 11), RATING_PREFIX)
            for i, probs in zip(todo, self._reader.read(self.engine, prompts)):
                total = sum(probs.values())
                mass[i] = total
                if total < self.config.min_mass or total <= 0:
                    errors[i] = ScoreError.NO_SCORE_TOKENS.value
                    continue
                values[i] = sum(k * p for k, p in probs.items()) / total
        else:
            params = SamplingParams(n=1, temperature=0.0, max_tokens=TEXT_MAX_TOKENS)
            for i, out in zip(todo, self.engine.generate(prompts, params) if prompts else []):
                rating = parse_rating(out[0].text)
                if rating is None:
                    errors[i] = ScoreError.UNPARSEABLE_VERDICT.value
                else:
                    values[i] = float(rating)
        return ScoreResult(values, errors, extra={"judge_mass": mass})

    def identity(self) -> dict[str, Any]:
        engine = self.engine.identity() if self.engine is not None else None
        return {"scorer": self.name, **self.config.model_dump(), "engine_identity": engine}
