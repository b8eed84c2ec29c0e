"""FLR: follow-up likelihood as reward.

Paper: Zhang et al. 2025, "Aligning Language Models Using Follow-up Likelihood as Reward
Signal" (AAAI-25, arXiv 2409.13948). A response is good when the user's likely next message
is a satisfied one. After the chat (x, y), each follow-up f from a fixed set is appended as the
NEXT USER TURN in the model's chat template, and a causal LM scores how likely the user is
to say it:

    s(f)      = (1/|f|) * sum_t log p(f_t | x, y, f_<t)      (mean token log-likelihood)
    FLR(x, y) = mean_{f in F+} s(f) - mean_{f in F-} s(f)

F+ / F- are positive / negative follow-ups in six categories (understanding, relevance,
correctness, engagingness, informativeness, following); prefdata's phrasing is its own, two
per category and side (12 + 12 with all categories).

Reads a `ScoreBatch` (prompt chats and responses). Writes one value per response and, in
`extra`, `flr_positive` / `flr_negative` (the two means).

Decisions:
* The released code averages raw LOGITS of the follow-up tokens (and reads them at positions
  shifted by one); prefdata uses log-probabilities at the positions that predict each token,
  as the paper's formula says. Logits are not comparable across contexts; log-probs are.
* Only the follow-up's own tokens are scored: the user-turn header before it and the
  end-of-turn tokens after it are context, not part of f (they are the same for every f and
  would only dilute the mean). Tokens are found by character offsets in the rendered chat, so
  a token that straddles the start of f counts as f's first token (TRL's boundary rule).
* All follow-ups of all responses go to the engine in ONE `score` call (with vLLM's automatic
  prefix caching the (x, y) prefix shared by a response's follow-ups can be computed once; the
  transformers engine runs every sequence in full, so FLR costs about |F+| + |F-| forwards of
  the chat per response there).
* A response whose chat plus its longest follow-up exceeds the engine's context gets null
  (`truncated`), never a score on a cut text; an empty response gets null (`empty_response`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefdata.engines.base import ContextLengthError
from prefdata.engines.chat import ChatFormatter
from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.types import Chat, FLRCategory, ScoreError

if TYPE_CHECKING:
    from prefdata.engines.base import Engine
    from prefdata.pipeline.context import BuildContext

CITATION = """@inproceedings{zhang2025flr,
  title={Aligning Language Models Using Follow-up Likelihood as Reward Signal},
  author={Zhang, Chen and Chong, Dading and Jiang, Feng and Tang, Chengguang and Gao, Anningzhe and Tang, Guohua and Li, Haizhou},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  year={2025},
  note={arXiv:2409.13948}
}"""

# (positive follow-ups, negative follow-ups) per category; prefdata's own phrasing.
FOLLOW_UPS: dict[FLRCategory, tuple[tuple[str, ...], tuple[str, ...]]] = {
    FLRCategory.UNDERSTANDING: (
        ("You understood exactly what I meant.", "Great, you got what I was asking for."),
        ("You misunderstood my question.", "That is not what I meant at all."),
    ),
    FLRCategory.RELEVANCE: (
        ("That addresses my question directly.", "This is exactly on topic, thanks."),
        ("That has nothing to do with what I asked.", "You went off-topic there."),
    ),
    FLRCategory.CORRECTNESS: (
        ("That is correct, thank you.", "Everything you said checks out."),
        ("That is wrong.", "There are mistakes in your answer."),
    ),
    FLRCategory.ENGAGINGNESS: (
        ("That was a pleasure to read!", "I enjoyed talking with you about this."),
        ("That was dull and robotic.", "This conversation is boring me."),
    ),
    FLRCategory.INFORMATIVENESS: (
        ("That was really informative, I learned a lot.", "Thanks, those details are very useful."),
        ("That tells me nothing useful.", "Your answer is too vague to help me."),
    ),
    FLRCategory.FOLLOWING: (
        ("You followed my instructions perfectly.", "That is exactly the format I asked for."),
        ("You ignored my instructions.", "I asked for something different from this."),
    ),
}


class FLRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["flr"] = "flr"
    engine: str = Field("policy", description="Engine (under [engines]) whose likelihood of the follow-ups is the reward")
    categories: tuple[FLRCategory, ...] = Field(tuple(FLRCategory), min_length=1,
                                                description="Follow-up categories whose built-in follow-ups are used")
    positive: tuple[str, ...] = Field((), description="Your own positive follow-ups (replace the categories' when set)")
    negative: tuple[str, ...] = Field((), description="Your own negative follow-ups (replace the categories' when set)")

    @model_validator(mode="after")
    def _both_or_neither(self) -> FLRConfig:
        if bool(self.positive) != bool(self.negative):
            raise ValueError("set both `positive` and `negative` follow-ups, or neither")
        if any(not f.strip() for f in (*self.positive, *self.negative)):
            raise ValueError("follow-ups must not be empty")
        return self

    def follow_ups(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(positive, negative) follow-ups in a fixed order."""
        if self.positive:
            return self.positive, self.negative
        pos = tuple(f for c in self.categories for f in FOLLOW_UPS[c][0])
        neg = tuple(f for c in self.categories for f in FOLLOW_UPS[c][1])
        return pos, neg


def follow_up_tokens(formatter: ChatFormatter, chat: Chat, follow_up: str) -> tuple[list[int], list[int]]:
    """(context ids, follow-up ids) of `chat` + the user turn `follow_up`, rendered by the chat template.

    The context runs up to the first token that holds a character of the follow-up; the
    follow-up ids end at its last character (the end-of-turn tokens after it are left out).
    """
    text = formatter.render([*chat, {"role": "user", "content": follow_up}], add_generation_prompt=False)
    start = text.rfind(follow_up)
    if start < 0:  # a template that rewrites user text (e.g. strips it): nothing to align to
        raise ValueError(f"the chat template does not keep the follow-up text {follow_up!r}")
    end = start + len(follow_up)
    encoded = formatter.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
    first, last = inside[0], inside[-1]
    return list(ids[:first]), list(ids[first : last + 1])


class FLRScorer(Scorer):
    name: ClassVar[str] = "flr"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: FLRConfig | None = None, engine: Engine | None = None):
        self.config = config or FLRConfig()
        self.engine = engine

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)

    def score(self, batch: ScoreBatch) -> ScoreResult:
        if self.engine is None:
            raise RuntimeError("FLR scorer has no engine: call setup() or pass engine=")
        positive, negative = self.config.follow_ups()
        follow_ups = (*positive, *negative)
        formatter = ChatFormatter(self.engine.tokenizer)
        n = len(batch)
        values: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        pos_means: list[float | None] = [None] * n
        neg_means: list[float | None] = [None] * n
        todo, contexts, targets = [], [], []
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
            if not response.strip():
                errors[i] = ScoreError.EMPTY_RESPONSE.value
                continue
            chat = [*prompt, {"role": "assistant", "content": response}]
            pieces = [follow_up_tokens(formatter, chat, f) for f in follow_ups]
            try:
                self.engine.check_lengths([c + t for c, t in pieces])
            except ContextLengthError:
                errors[i] = ScoreError.TRUNCATED.value
                continue
            todo.append(i)
            contexts += [c for c, _ in pieces]
            targets += [t for _, t in pieces]
        logps = self.engine.score(contexts, targets) if contexts else []
        k = len(follow_ups)
        for j, i in enumerate(todo):
            means = [float(np.mean(lp)) for lp in logps[j * k : (j + 1) * k]]
            pos_means[i] = float(np.mean(means[: len(positive)]))
            neg_means[i] = float(np.mean(means[len(positive) :]))
            values[i] = pos_means[i] - neg_means[i]
        return ScoreResult(values, errors, extra={"flr_positive": pos_means, "flr_negative": neg_means})

    def identity(self) -> dict[str, Any]:
        engine = self.engine.identity() if self.engine is not None else None
        return {"scorer": self.name, **self.config.model_dump(mode="json"), "engine_identity": engine}
