"""Text pieces of RISE (arXiv 2410.06638): step splitting, error types, edit prompts, edit spans.

Pure functions over strings (no engine), so each rule is tested on its own; the stage in
`prefdata.generators.rise` strings them together. See that module for the method and its
Decisions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

# --- prompts (the authors' wording, paraphrased; METHODS.md "RISE") ------------------------------

SOLVE_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
SOLVE_PREFILL = "Let's think step by step.\nStep 1: "

EDIT_SYSTEM = "You are a careful math teacher who writes realistic student mistakes for an exercise book."
EDIT_TEMPLATE = (
    "Here is a math question and the first steps of a correct solution.\n\n"
    "Question:\n```\n{question}\n```\n\n"
    "Previous steps:\n```\n{previous}\n```\n\n"
    "Current step:\n```\n{step}\n```\n\n"
    "Rewrite ONLY the following part of the current step so that it contains exactly one subtle error: "
    "{instruction}\n\n"
    "Part to rewrite:\n```\n{target}\n```\n\n"
    "Keep everything else the same, keep the same style, and do not state that errors were made. "
    "Answer with the rewritten part in a fenced block."
)
EDIT_PREFILL = "```\n"
EDIT_STOP = ("```",)

# A "correct" sample that corrects itself is not used as chosen (the authors' phrase list).
SELF_CORRECTION_PHRASES = ("a mistake", "let's correct", "the correct", "let's reconsider")
# An edit that says it is wrong gives the error away (the authors' list).
GIVEAWAY_WORDS = ("incorrect", "wrong", "mistakenly", "let's correct")


class ErrorType(str, Enum):
    """The six error types RISE injects (which apply depends on the edited text)."""

    VALUE_CHANGE = "value_change"  # digits present: change one value (or a series of related values)
    WRONG_SUBSTITUTION = "wrong_substitution"  # '=' present
    DELETE_TERM = "delete_term"  # '=' present
    OPERATOR_CHANGE = "operator_change"  # '=' present
    SWAP_TERMS = "swap_terms"  # '=' present
    MISUNDERSTANDING = "misunderstanding"  # no digits and no '='


ONE_VALUE = "change one value so that a calculation gives a wrong result."
SEVERAL_VALUES = "change a value, or a series of related values, so that a calculation gives a wrong result."
INSTRUCTIONS = {
    ErrorType.WRONG_SUBSTITUTION: "substitute a wrong value or symbol into an equation.",
    ErrorType.DELETE_TERM: "delete one term from a calculation.",
    ErrorType.OPERATOR_CHANGE: "change one operator (+, -, *, /) in a calculation.",
    ErrorType.SWAP_TERMS: "swap two terms of a calculation.",
    ErrorType.MISUNDERSTANDING: "change some related words so that the step misunderstands the question.",
}

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MATH_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[-+*/=x×÷]")


def numbers_in(text: str) -> list[str]:
    return _NUMBER.findall(text)


def applicable_error_types(text: str) -> list[ErrorType]:
    """Error types that can be injected into `text` (the part of the step that is edited)."""
    has_digits, has_equals = bool(numbers_in(text)), "=" in text
    types = [ErrorType.VALUE_CHANGE] if has_digits else []
    if has_equals:
        types += [ErrorType.WRONG_SUBSTITUTION, ErrorType.DELETE_TERM, ErrorType.OPERATOR_CHANGE, ErrorType.SWAP_TERMS]
    if not has_digits and not has_equals:
        types.append(ErrorType.MISUNDERSTANDING)
    return types


def instruction_for(error_type: ErrorType, text: str) -> str:
    if error_type == ErrorType.VALUE_CHANGE:
        return ONE_VALUE if len(numbers_in(text)) == 1 else SEVERAL_VALUES
    return INSTRUCTIONS[error_type]


# --- solutions and steps ---------------------------------------------------------------------------

_STEP = re.compile(r"(?:^|\n)Step \d+:")
_ANNOTATION = re.compile(r"<<[^>]*>>")
_GSM8K_FINAL = re.compile(r"^\s*(?:####|A:)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Steps:
    """A solution cut into steps: `header` (text before "Step 1:"), then each step's text starting
    at its "Step N:" label, so header + "".join(steps) == the solution."""

    header: str
    steps: tuple[str, ...]


def split_steps(solution: str) -> Steps:
    starts = [m.start() + (1 if m.group().startswith("\n") else 0) for m in _STEP.finditer(solution)]
    if not starts:
        return Steps(solution, ())
    bounds = [*starts, len(solution)]
    return Steps(solution[: starts[0]], tuple(solution[a:b] for a, b in zip(bounds, bounds[1:])))


def to_step_format(solution: str) -> str:
    """A GSM8K-style solution (one line per step, "<<...>>" calculator annotations, a final "#### N"
    or "A: N" line) rewritten in the format RISE samples: the pre-fill, one "Step N:" per line, the
    final answer boxed."""
    lines = [_ANNOTATION.sub("", line).strip() for line in solution.strip().splitlines()]
    lines = [line for line in lines if line]
    answer = None
    if lines and (match := _GSM8K_FINAL.match(lines[-1])):
        answer = match.group(1).replace(",", "")
        lines = lines[:-1]
    if answer is not None:
        lines.append(f"The final answer is \\boxed{{{answer}}}.")
    steps = [f"Step {i}: {line}" for i, line in enumerate(lines, start=1)]
    return SOLVE_PREFILL[: -len("Step 1: ")] + "\n".join(steps)


def has_self_correction(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in SELF_CORRECTION_PHRASES)


def has_giveaway(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in GIVEAWAY_WORDS)


# --- sentences: only the last few of a step are edited ---------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")


def split_tail(step: str, max_sentences: int) -> tuple[str, str]:
    """(head, tail): tail = the step's last `max_sentences` sentences (with the whitespace between
    them), head + tail == step. A sentence ends at '.', '!' or '?' followed by space, or a newline;
    a decimal point ("2.5") does not end one."""
    body = step.rstrip()
    cuts = [m.end() for m in _SENTENCE_END.finditer(body)]
    if len(cuts) < max_sentences:
        return "", step
    start = cuts[-max_sentences]
    return step[:start], step[start:]


def math_tokens(text: str) -> list[str]:
    return _MATH_TOKEN.findall(text)


# --- edit size and spans ---------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]|\s+")


def _tokens(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def word_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance over word/punctuation tokens (whitespace ignored), divided by the
    longer token count: 0 = same words, 1 = nothing in common."""
    x = [m.group() for m in _tokens(a) if not m.group().isspace()]
    y = [m.group() for m in _tokens(b) if not m.group().isspace()]
    if not x and not y:
        return 0.0
    previous = list(range(len(y) + 1))
    for i, tx in enumerate(x, start=1):
        current = [i]
        for j, ty in enumerate(y, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (tx != ty)))
        previous = current
    return previous[-1] / max(len(x), len(y))


@dataclass(frozen=True)
class Span:
    side: str  # "chosen" | "rejected"
    char_start: int
    char_end: int


def diff_spans(chosen: str, rejected: str) -> list[Span]:
    """Half-open character ranges where the two texts differ, on each side, at word granularity:
    a changed number or word is covered whole ("60" -> "65" covers "60" and "65"). Insertions give
    a span on the rejected side only, deletions on the chosen side only."""
    import difflib

    a, b = _tokens(chosen), _tokens(rejected)
    matcher = difflib.SequenceMatcher(None, [m.group() for m in a], [m.group() for m in b], autojunk=False)
    spans: list[Span] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        for side, tokens, lo, hi in (("chosen", a, i1, i2), ("rejected", b, j1, j2)):
            # Whitespace at the edges of a changed run is not part of the edit.
            run = [m for m in tokens[lo:hi]]
            while run and run[0].group().isspace():
                run.pop(0)
            while run and run[-1].group().isspace():
                run.pop()
            if run:
                spans.append(Span(side, run[0].start(), run[-1].end()))
    return spans


def token_span(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    """[first, last+1) of the tokens whose characters overlap [char_start, char_end)."""
    hits = [i for i, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def choose_error_type(text: str, rng: random.Random) -> ErrorType | None:
    types = applicable_error_types(text)
    return rng.choice(types) if types else None
