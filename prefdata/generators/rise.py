"""RISE: hard negatives by self-editing a correct math solution to inject one subtle error.

Paper: Xu et al. 2024, "Subtle Errors Matter: Preference Learning via Error-injected
Self-editing" (arXiv 2410.06638; code kaishxu/RISE). For each question:

1. sample k solutions with the step-by-step prompt and the assistant turn pre-filled with
   "Let's think step by step.\\nStep 1: " (authors: k = 5, temperature 0.2, top_p 0.9) and check
   each final answer with the verifier (`prefdata.scorers.verifier`); a correct sample that
   corrects itself ("a mistake", "Let's correct", "The correct", "Let's reconsider") is not used
   as chosen;
2. **full-solution pair**: a random correct solution vs a random incorrect one;
3. **self-edit pair**: cut a correct solution on "Step N:", pick a step uniformly, take at most its
   last `max_edit_sentences` (4) sentences, pick an error type uniformly among those applicable to
   that text (`rise_edits.applicable_error_types`: digits -> change a value (one value, or a series
   of related values); '=' -> also wrong substitution, delete a term, change an operator, swap two
   terms; neither -> change related words into a misunderstanding), and ask the policy (the same
   engine) to rewrite that text with the error, showing question, previous steps and current
   step in fenced blocks, saying "do not state that errors were made", the answer primed with a
   fenced block. The first fenced block is the edit; chosen = prefix + the original text,
   rejected = prefix + the edit, prefix = the solution up to the edited text.

Reads `id`, `prompt`, `reference` (a prompt table; the question is the last user turn). Writes
pair rows; `chosen_score`/`rejected_score` are the verifier's 1.0/0.0 (self-edit pairs get them by
construction: the chosen text comes from a verified solution, the rejected one is checked to
carry an error, see below). Metadata: `pair_type` (full_solution | self_edit), `solution_source`
(sampled | reference_fallback | extra), `error_type`, `step_index` (0-based), `n_steps`,
`edit_spans` (list of {side, char_start, char_end, token_start, token_end}), `edit_distance`,
`prefix_chars`, `n_samples`, `n_correct`, `chosen_index`/`rejected_index` (candidate positions:
samples first, then extra solutions; -1 for the reference), `policy`.

Decisions:
* **Prefix.** The paper's prompt is question + previous steps. A chat prompt must end with a user
  turn (TRL, prefdata's trainer), so the prompt is the question and the shared prefix (pre-fill,
  previous steps, the untouched head of the step) starts both responses; `prefix_chars` is its
  length. Its tokens are identical on both sides, so they cancel in the DPO log-ratio difference.
* **Edit spans.** `edit_spans` hold half-open character ranges into the content of each side's
  last message where chosen and rejected differ, at word granularity (a changed number is
  covered whole), plus `token_start`/`token_end`: the policy tokenizer's tokens of that content
  (no chat template) overlapping the range. The trainer reads the character spans.
* **Subtlety bound.** An edit whose word-level edit distance to the original text, divided by the
  longer word count, exceeds `max_edit_distance` (0.3) is dropped (`edit_too_large`).
* **Post-processing drops**, each a reject with its reason: the edit ran out of tokens before
  closing its block (`edit_truncated`), is empty (`edit_empty`), contains a give-away word
  ("incorrect", "wrong", "mistakenly", "Let's correct"; `edit_giveaway`), equals the original
  (`edit_unchanged`), or injects no error (`edit_no_error`): when the edited step is the last
  one the verifier must now find the final answer wrong; otherwise an edit of text that has
  numbers must change its sequence of numbers and operators (a word-only edit of a calculation
  step is not a calculation error). For the "misunderstanding" type (no digits, no '=') a text
  change is all that can be checked.
* **Reference fallback.** A small policy rarely solves GSM8K. With `reference_fallback`, a
  question with no correct sample uses the reference solution, rewritten in the step format
  ("<<...>>" calculator annotations removed, one "Step N:" per line, the "#### N" line boxed), as
  the correct solution: it is edited and is the chosen side of the full-solution pair. Rows say
  so in `solution_source`. Off by default (it makes chosen off-policy).
* **Extra solutions.** `extra_solutions` adds solutions from a file (matched by the prompt row's
  id, never by text), e.g. other models' GSM8K solutions; they are rewritten in the step format
  and verified like samples (`solution_source` = extra).
* Verification reads the last number when no final-answer form is found (`verifier`
  `last_number_fallback`, on by default here): a sample cut off mid-solution is a wrong answer,
  not a missing one. Null verdicts never enter a pair (counted as `score_null_<code>`).
* One engine call per step per shard: all questions' samples in one `generate`, all edits in one.
  Seeds derive from (recipe seed, prompt id), so a question gets the same samples and edits in any
  shard. A question that yields no pair goes to the rejects with its candidates.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.chat import ChatFormatter
from prefdata.generators import rise_edits as edits
from prefdata.generators.config import SamplingConfig
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import InputError, Reject
from prefdata.schemas.pair import CORE_PAIR_COLUMNS, assistant_turn, make_pair_id, pair_schema
from prefdata.scorers.base import ScoreBatch
from prefdata.scorers.verifier import MathVerifier, VerifierConfig
from prefdata.types import RejectReason

CITATION = """@article{xu2024subtle,
  title={Subtle Errors Matter: Preference Learning via Error-injected Self-editing},
  author={Xu, Kaishuai and Yu, Tiezheng and Hou, Wenjun and Cheng, Yi and Wang, Liqing and Xiao, Xiaoyu and Zhao, Xiaohua and Pan, Xin and Li, Wenjie and Ma, Wenjie},
  journal={arXiv preprint arXiv:2410.06638},
  year={2024}
}"""

SPAN_TYPE = pa.struct([
    pa.field("side", pa.string()),
    pa.field("char_start", pa.int32()),
    pa.field("char_end", pa.int32()),
    pa.field("token_start", pa.int32()),
    pa.field("token_end", pa.int32()),
])
METADATA_TYPE = pa.struct([
    pa.field("pair_type", pa.string()),
    pa.field("solution_source", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("step_index", pa.int32()),
    pa.field("n_steps", pa.int32()),
    pa.field("edit_spans", pa.list_(SPAN_TYPE)),
    pa.field("edit_distance", pa.float64()),
    pa.field("prefix_chars", pa.int32()),
    pa.field("n_samples", pa.int32()),
    pa.field("n_correct", pa.int32()),
    pa.field("chosen_index", pa.int32()),
    pa.field("rejected_index", pa.int32()),
    pa.field("policy", pa.string()),
])
FULL_SOLUTION, SELF_EDIT = "full_solution", "self_edit"
SAMPLED, REFERENCE_FALLBACK, EXTRA = "sampled", "reference_fallback", "extra"
REFERENCE_INDEX = -1


class ExtraSolutionsConfig(BaseModel):
    """Solutions from a file, added to each question's candidates (matched by row id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="JSONL or Parquet file with one row per question")
    id: str = Field("id", description="Column holding the question's id (the prompt row's `id`)")
    fields: tuple[str, ...] = Field(min_length=1, description="Dotted columns holding solution texts, e.g. '6b_finetuning.solution'")


class RiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["rise"] = "rise"
    engine: str = Field("policy", description="Engine (under [engines]) that samples solutions and writes the edits")
    k: int = Field(5, ge=1, description="Solutions sampled per question")
    sampling: SamplingConfig = Field(SamplingConfig(temperature=0.2, top_p=0.9, max_tokens=512),
                                     description="Sampling of solutions (authors: temperature 0.2, top_p 0.9)")
    edit_sampling: SamplingConfig = Field(SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=256),
                                          description="Sampling of edits (generation also stops at the closing fence)")
    full_solution_pairs: bool = Field(True, description="Emit a correct vs incorrect full-solution pair per question")
    edits_per_question: int = Field(1, ge=0, description="Self-edit attempts per question (each picks a step and an error type)")
    max_edit_sentences: int = Field(4, ge=1, description="Edit at most this many final sentences of the chosen step")
    max_edit_distance: float = Field(0.3, gt=0, le=1, description="Drop edits whose normalised word edit distance exceeds this")
    reference_fallback: bool = Field(False, description="With no correct sample, use the reference solution (step format) as the correct one")
    extra_solutions: ExtraSolutionsConfig | None = Field(None, description="Solutions from a file, verified and pooled with the samples")
    verifier: VerifierConfig = Field(VerifierConfig(last_number_fallback=True), description="Final-answer check")


@dataclass
class Candidate:
    text: str
    source: str
    index: int
    finish: str = "stop"
    score: float | None = None


@dataclass
class EditJob:
    row: int
    attempt: int
    base: Candidate
    steps: edits.Steps
    step_index: int
    head: str  # untouched start of the step (its label and sentences before the edited tail)
    target: str  # the text the policy rewrites
    error_type: edits.ErrorType
    messages: list[dict[str, str]]

    @property
    def prefix(self) -> str:
        return self.steps.header + "".join(self.steps.steps[: self.step_index]) + self.head

    @property
    def is_last_step(self) -> bool:
        return self.step_index == len(self.steps.steps) - 1


def question_of(prompt: list[dict[str, str]]) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def solve_chat(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt with its last user turn wrapped in RISE's step-by-step instruction."""
    last_user = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    chat = [dict(m) for m in prompt[: last_user + 1]]
    chat[last_user]["content"] = edits.SOLVE_TEMPLATE.format(question=chat[last_user]["content"])
    return chat


def load_extra_solutions(config: ExtraSolutionsConfig) -> dict[str, list[str]]:
    from prefdata.schemas.readers import _MISSING, _get, iter_records

    solutions: dict[str, list[str]] = {}
    for index, record, _ in iter_records(config.path):
        if not isinstance(record, dict):
            raise InputError(str(config.path), f"unreadable row ({record})", row=index)
        key = _get(record, config.id)
        if key is _MISSING:
            raise InputError(str(config.path), "row has no id", row=index, field=config.id)
        texts = [_get(record, f) for f in config.fields]
        solutions[str(key)] = [t for t in texts if isinstance(t, str) and t.strip()]
    return solutions


def split_step_label(step: str) -> tuple[str, str]:
    """("Step N: ", rest) for a step text."""
    colon = step.index(":") + 1
    while colon < len(step) and step[colon] == " ":
        colon += 1
    return step[:colon], step[colon:]


class RiseGenerator(Stage):
    name: ClassVar[str] = "rise"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt", "reference")
    adds: ClassVar[tuple[str, ...]] = CORE_PAIR_COLUMNS
    replaces_columns: ClassVar[bool] = True
    config: RiseConfig

    def __init__(self, config: RiseConfig | None = None):
        super().__init__(config or RiseConfig())
        self.verifier = MathVerifier(self.config.verifier)
        self.engine: Any = None
        self.extra: dict[str, list[str]] = {}

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)
        if self.config.extra_solutions is not None:
            self.extra = load_extra_solutions(self.config.extra_solutions)

    # -- one engine call: k solutions for every question of the shard --------------------------
    def _sample(self, rows: list[dict], formatter: ChatFormatter, ctx: BuildContext) -> list[list[Candidate]]:
        cfg = self.config
        ids = [formatter.prompt_ids(solve_chat(r["prompt"]), assistant_prefix=edits.SOLVE_PREFILL) for r in rows]
        params = [cfg.sampling.params(cfg.k, ctx.seed_for(self.name, "solve", r["id"])) for r in rows]
        samples = self.engine.generate(ids, params) if rows else []
        candidates = []
        for row, completions in zip(rows, samples):
            pool = [Candidate(edits.SOLVE_PREFILL + c.text, SAMPLED, i, c.finish_reason) for i, c in enumerate(completions)]
            for text in self.extra.get(row["id"], []):
                pool.append(Candidate(edits.to_step_format(text), EXTRA, len(pool)))
            candidates.append(pool)
        return candidates

    def _verify(self, texts: list[str], references: list[str | None], counters: Counter) -> list[float | None]:
        result = self.verifier.score(ScoreBatch(prompts=[[]] * len(texts), responses=texts, references=references))
        counters.update({f"score_null_{code}": n for code, n in result.error_counts().items()})
        return result.values

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        cfg, engine = self.config, self.engine
        formatter = ChatFormatter(engine.tokenizer)
        rejects: list[Reject] = []
        counters: Counter = Counter()
        rows = []
        for row in table.to_pylist():
            n_tokens = len(formatter.prompt_ids(solve_chat(row["prompt"]), assistant_prefix=edits.SOLVE_PREFILL))
            if n_tokens + 1 > engine.max_model_len:
                rejects.append(Reject(self.name, RejectReason.PROMPT_TOO_LONG, row_id=row["id"], field="prompt",
                                      detail=f"{n_tokens} prompt tokens; the policy's context is {engine.max_model_len}",
                                      payload=row))
                continue
            rows.append(row)

        candidates = self._sample(rows, formatter, ctx)
        flat = [(r, c) for r, pool in enumerate(candidates) for c in pool]
        verdicts = self._verify([c.text for _, c in flat], [rows[r]["reference"] for r, _ in flat], counters)
        for (_, candidate), score in zip(flat, verdicts):
            candidate.score = score
        counters["samples"] += sum(c.source == SAMPLED for _, c in flat)
        counters["samples_correct"] += sum(c.source == SAMPLED and c.score == 1.0 for _, c in flat)

        fallbacks = self._fallbacks(rows, candidates, counters)
        out_rows: list[dict] = []
        jobs: list[EditJob] = []
        correct_by_row: list[list[Candidate]] = []
        for r, row in enumerate(rows):
            rng = random.Random(ctx.seed_for(self.name, "choose", row["id"]))
            correct = [c for c in candidates[r] if c.score == 1.0]
            excluded = [c for c in correct if edits.has_self_correction(c.text)]
            counters["self_correcting_excluded"] += len(excluded)
            correct = [c for c in correct if c not in excluded] or ([fallbacks[r]] if fallbacks[r] else [])
            incorrect = [c for c in candidates[r] if c.score == 0.0]
            correct_by_row.append(correct)
            if not correct:
                rejects.append(Reject(self.name, RejectReason.NO_CORRECT_SOLUTION, row_id=row["id"],
                                      detail=f"0 of {len(candidates[r])} candidates verified correct",
                                      payload={**row, "candidates": [c.text for c in candidates[r]],
                                               "scores": [c.score for c in candidates[r]]}))
                continue
            if cfg.full_solution_pairs:
                pair = self._full_pair(row, correct, incorrect, candidates[r], rng, counters)
                if pair is not None:
                    out_rows.append(pair)
            for attempt in range(cfg.edits_per_question):
                job = self._edit_job(r, attempt, row, rng.choice(correct), rng)
                if job is None:
                    counters["no_steps"] += 1
                    rejects.append(Reject(self.name, RejectReason.NO_STEPS, row_id=row["id"],
                                          detail="the correct solution has no 'Step N:'", payload=row))
                else:
                    jobs.append(job)

        out_rows += self._run_edits(rows, jobs, candidates, formatter, ctx, rejects, counters)
        produced = Counter(row["prompt_id"] for row in out_rows)
        for r, row in enumerate(rows):
            if correct_by_row[r] and not produced[row["id"]]:
                rejects.append(Reject(self.name, RejectReason.NO_PAIR, row_id=row["id"],
                                      detail="no full-solution pair and no valid self-edit",
                                      payload={**row, "candidates": [c.text for c in candidates[r]],
                                               "scores": [c.score for c in candidates[r]]}))
        counters.update({f"pairs_{t}": n for t, n in Counter(o["metadata"]["pair_type"] for o in out_rows).items()})
        return StageOutput(pa.Table.from_pylist(out_rows, schema=pair_schema(METADATA_TYPE)), rejects, counters)

    def _fallbacks(self, rows: list[dict], candidates: list[list[Candidate]], counters: Counter) -> list[Candidate | None]:
        """The reference in step format for questions with no usable correct candidate (verified too)."""
        out: list[Candidate | None] = [None] * len(rows)
        if not self.config.reference_fallback:
            return out
        need = [r for r, pool in enumerate(candidates)
                if rows[r]["reference"] and not any(c.score == 1.0 and not edits.has_self_correction(c.text) for c in pool)]
        texts = [edits.to_step_format(rows[r]["reference"]) for r in need]
        for r, text, score in zip(need, texts, self._verify(texts, [rows[r]["reference"] for r in need], counters)):
            if score == 1.0:
                out[r] = Candidate(text, REFERENCE_FALLBACK, REFERENCE_INDEX, score=1.0)
                counters["reference_fallback_used"] += 1
            else:
                counters["reference_fallback_unverified"] += 1
        return out

    def _base_metadata(self, pool: list[Candidate]) -> dict[str, Any]:
        return {"n_samples": sum(c.source == SAMPLED for c in pool), "n_correct": sum(c.score == 1.0 for c in pool), "policy": self.engine.model_id,
                "error_type": None, "step_index": None, "n_steps": None, "edit_spans": [], "edit_distance": None,
                "prefix_chars": 0}

    def _pair_row(self, row: dict, chosen: str, rejected: str, key: list, metadata: dict) -> dict[str, Any]:
        parameters = {"config": self.config.model_dump(mode="json"), "policy": self.engine.identity()}
        return {
            "id": make_pair_id(row["id"], self.name, parameters, key=key),
            "prompt_id": row["id"],
            "prompt": solve_chat(row["prompt"]),
            "chosen": assistant_turn(chosen),
            "rejected": assistant_turn(rejected),
            "chosen_score": 1.0,
            "rejected_score": 0.0,
            "margin": 1.0,
            "source": self.name,
            "metadata": metadata,
        }

    def _full_pair(self, row: dict, correct: list[Candidate], incorrect: list[Candidate], pool: list[Candidate],
                   rng: random.Random, counters: Counter) -> dict[str, Any] | None:
        incorrect = [c for c in incorrect if all(c.text.strip() != g.text.strip() for g in correct)]
        if not incorrect:
            counters["full_solution_no_incorrect"] += 1
            return None
        good, bad = rng.choice(correct), rng.choice(incorrect)
        metadata = {**self._base_metadata(pool), "pair_type": FULL_SOLUTION, "solution_source": good.source,
                    "chosen_index": good.index, "rejected_index": bad.index}
        return self._pair_row(row, good.text, bad.text, [FULL_SOLUTION, good.index, bad.index], metadata)

    def _edit_job(self, r: int, attempt: int, row: dict, base: Candidate, rng: random.Random) -> EditJob | None:
        steps = edits.split_steps(base.text)
        if not steps.steps:
            return None
        step_index = rng.randrange(len(steps.steps))
        step = steps.steps[step_index].rstrip()
        label, body = split_step_label(step)
        head, target = edits.split_tail(body, self.config.max_edit_sentences)
        error_type = edits.choose_error_type(target, rng)
        previous = "".join(steps.steps[:step_index]).strip() or "(none)"
        content = edits.EDIT_TEMPLATE.format(question=question_of(row["prompt"]), previous=previous, step=step,
                                             instruction=edits.instruction_for(error_type, target), target=target)
        messages = [{"role": "system", "content": edits.EDIT_SYSTEM}, {"role": "user", "content": content}]
        return EditJob(r, attempt, base, steps, step_index, label + head, target, error_type, messages)

    # -- one engine call: every edit of the shard ------------------------------------------------
    def _run_edits(self, rows: list[dict], jobs: list[EditJob], candidates: list[list[Candidate]],
                   formatter: ChatFormatter, ctx: BuildContext, rejects: list[Reject], counters: Counter) -> list[dict]:
        cfg = self.config
        sampling = cfg.edit_sampling.model_copy(update={"stop": tuple(dict.fromkeys((*cfg.edit_sampling.stop, *edits.EDIT_STOP)))})
        prompts = [formatter.prompt_ids(j.messages, assistant_prefix=edits.EDIT_PREFILL) for j in jobs]
        fits = [len(p) + 1 <= self.engine.max_model_len for p in prompts]
        params = [sampling.params(1, ctx.seed_for(self.name, "edit", rows[j.row]["id"], j.attempt)) for j in jobs]
        todo = [i for i, ok in enumerate(fits) if ok]
        outputs = self.engine.generate([prompts[i] for i in todo], [params[i] for i in todo]) if todo else []
        completions = dict(zip(todo, (o[0] for o in outputs)))
        counters["edits_attempted"] += len(jobs)

        accepted, pending = [], []
        for i, job in enumerate(jobs):
            row = rows[job.row]
            if i not in completions:
                self._drop(rejects, row, job, RejectReason.PROMPT_TOO_LONG, f"edit prompt of {len(prompts[i])} tokens", "")
                continue
            completion = completions[i]
            edited = completion.text.strip()
            reason, detail = None, ""
            if completion.finish_reason == "length":
                reason, detail = RejectReason.EDIT_TRUNCATED, "no closing fence within max_tokens"
            elif not edited:
                reason = RejectReason.EDIT_EMPTY
            elif edits.has_giveaway(edited):
                reason = RejectReason.EDIT_GIVEAWAY
            elif edited == job.target.strip():
                reason = RejectReason.EDIT_UNCHANGED
            else:
                distance = edits.word_edit_distance(job.target, edited)
                if distance > cfg.max_edit_distance:
                    reason, detail = RejectReason.EDIT_TOO_LARGE, f"normalised edit distance {distance:.3f} > {cfg.max_edit_distance}"
                elif not job.is_last_step and edits.numbers_in(job.target) and \
                        edits.math_tokens(edited) == edits.math_tokens(job.target):
                    reason, detail = RejectReason.EDIT_NO_ERROR, "no number or operator changed"
            if reason is not None:
                self._drop(rejects, row, job, reason, detail, completion.text)
                continue
            pending.append((job, edited, distance))

        # The last step carries the final answer: the edit must make it wrong (one verifier call).
        last = [(job, edited) for job, edited, _ in pending if job.is_last_step]
        verdicts = self._verify([job.prefix + edited for job, edited in last], [rows[j.row]["reference"] for j, _ in last], counters)
        wrong = {id(job): v for (job, _), v in zip(last, verdicts)}
        for job, edited, distance in pending:
            if job.is_last_step and wrong[id(job)] != 0.0:
                detail = "the final answer is still right" if wrong[id(job)] == 1.0 else "the edited solution has no final answer"
                self._drop(rejects, rows[job.row], job, RejectReason.EDIT_NO_ERROR, detail, edited)
                continue
            accepted.append(self._edit_pair(rows[job.row], job, edited, distance, candidates[job.row]))
        counters["edits_accepted"] += len(accepted)
        return accepted

    def _drop(self, rejects: list[Reject], row: dict, job: EditJob, reason: RejectReason, detail: str, edit: str) -> None:
        rejects.append(Reject(self.name, reason, row_id=row["id"], field="edit", detail=detail or reason.value,
                              payload={"id": row["id"], "step_index": job.step_index, "error_type": job.error_type.value,
                                       "target": job.target, "edit": edit}))

    def _edit_pair(self, row: dict, job: EditJob, edited: str, distance: float, pool: list[Candidate]) -> dict[str, Any]:
        prefix = job.prefix
        chosen, rejected = prefix + job.target.rstrip(), prefix + edited
        spans = []
        offsets = {side: self._offsets(text) for side, text in (("chosen", chosen), ("rejected", rejected))}
        for span in edits.diff_spans(chosen, rejected):
            start, end = edits.token_span(offsets[span.side], span.char_start, span.char_end)
            spans.append({"side": span.side, "char_start": span.char_start, "char_end": span.char_end,
                          "token_start": start, "token_end": end})
        metadata = {**self._base_metadata(pool), "pair_type": SELF_EDIT, "solution_source": job.base.source,
                    "error_type": job.error_type.value, "step_index": job.step_index, "n_steps": len(job.steps.steps),
                    "edit_spans": spans, "edit_distance": distance, "prefix_chars": len(prefix),
                    "chosen_index": job.base.index, "rejected_index": None}
        return self._pair_row(row, chosen, rejected, [SELF_EDIT, job.base.index, job.attempt], metadata)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.engine.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in encoded["offset_mapping"]]
