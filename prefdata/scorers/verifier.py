"""Math answer verifier: 1.0 if a response's final answer equals the reference's, else 0.0.

Final answers are read, in this order, from: GSM8K's "#### N", the last "\\boxed{N}", "The
(final) answer is N", and an "A: N" line (the form of GSM8K's released model solutions).
Numbers are compared exactly as decimals after removing thousands separators, currency signs,
units after the number and trailing zeros ("1,000.00" == "1000"; "3/4" == "0.75";
"\\frac{3}{4}" == "3/4").

A response with no recognisable final answer gets null (`no_answer`), not 0: "did not answer in
a checkable form" is a different fact from "answered wrong", and the builder reports it. Set
`last_number_fallback` to also accept a number the response's final sentence states as its
result (looser, as many evals do) -- but never any number from anywhere: only the last number of
the last sentence of the last non-empty line, and only when that sentence is a bare number ("18",
"$18.", "**18 eggs**") or states a result (an answer cue: answer, total, therefore, thus, so,
hence, altogether, in all, result, or "="), is at most 40 words long and does not repeat a word
three times in a row (degenerate sampling). A gibberish reply that happens to contain "15%"
gets null, not the label `correct` (a regression test holds the observed case).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.types import ScoreError

_NUMBER = r"-?\$?\s*-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\$?\s*-?\.\d+"
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?\d[\d,]*(?:\.\d+)?)\s*\}\{\s*(\d[\d,]*(?:\.\d+)?)\s*\}")
_PATTERNS = (
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"\\boxed\{\s*(?:\\text\{[^}]*\}\s*)?(" + _NUMBER + r")[^}]*\}"),
    re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*[:=]?\s*\**\s*(" + _NUMBER + ")", re.IGNORECASE),
    re.compile(r"(?m)^A:\s*(" + _NUMBER + ")"),
)
_ANY_NUMBER = re.compile(_NUMBER)
_BARE = re.compile(r"^[*_\s]*(" + _NUMBER + r")\s*%?\s*(?:[A-Za-z]+\s*){0,2}[.!*_\s]*$")
_CUE = re.compile(r"\b(?:answer|total|totals|therefore|thus|so|hence|altogether|in all|result)\b|=", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)
MAX_FINAL_WORDS = 40


def stated_final_number(text: str) -> str | None:
    """The number a response's final sentence states as its result, or None (see the module docstring)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=\S)", lines[-1]) if re.search(r"\w", s)]
    if not sentences:
        return None
    sentence = sentences[-1]
    bare = _BARE.match(sentence)
    if bare:
        return bare.group(1)
    if len(sentence.split()) > MAX_FINAL_WORDS or _REPEAT.search(sentence) or not _CUE.search(sentence):
        return None
    numbers = _ANY_NUMBER.findall(sentence)
    return numbers[-1] if numbers else None
CITATION = """@article{cobbe2021training,
  title={Training Verifiers to Solve Math Word Problems},
  author={Cobbe, Karl and Kosaraju, Vineet and Bavarian, Mohammad and Chen, Mark and Jun, Heewoo and Kaiser, Lukasz and Plappert, Matthias and Tworek, Jerry and Hilton, Jacob and Nakano, Reiichiro and Hesse, Christopher and Schulman, John},
  journal={arXiv preprint arXiv:2110.14168},
  year={2021}
}"""


def parse_number(text: str) -> Fraction | None:
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in cleaned:
            num, den = cleaned.split("/", 1)
            return Fraction(Decimal(num)) / Fraction(Decimal(den)) if Decimal(den) != 0 else None
        return Fraction(Decimal(cleaned))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str, last_number_fallback: bool = False) -> Fraction | None:
    """The final numeric answer of a solution, or None if it states none in a known form."""
    text = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)  # LaTeX \frac{a}{b} -> a/b
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return parse_number(matches[-1])
    if last_number_fallback:
        stated = stated_final_number(text)
        if stated is not None:
            return parse_number(stated)
    return None


def reference_answer(text: str) -> Fraction | None:
    """A reference solution's answer: its final-answer form, else its last number (references are trusted)."""
    found = extract_answer(text)
    if found is not None:
        return found
    numbers = _ANY_NUMBER.findall(_FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text))
    return parse_number(numbers[-1]) if numbers else None


class VerifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["verifier"] = "verifier"
    last_number_fallback: bool = Field(False, description="If no final-answer form is found, use the number the final sentence states as the result")


class MathVerifier(Scorer):
    name: ClassVar[str] = "verifier"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()

    def score(self, batch: ScoreBatch) -> ScoreResult:
        values: list[float | None] = []
        errors: list[str | None] = []
        for i, response in enumerate(batch.responses):
            reference = batch.reference(i)
            if reference is None:
                values.append(None)
                errors.append(ScoreError.NO_REFERENCE.value)
                continue
            expected = reference_answer(reference)
            if expected is None:
                values.append(None)
                errors.append(ScoreError.UNPARSEABLE_REFERENCE.value)
                continue
            got = extract_answer(response, self.config.last_number_fallback)
            if got is None:
                values.append(None)
                errors.append(ScoreError.NO_ANSWER.value)
                continue
            values.append(1.0 if got == expected else 0.0)
            errors.append(None)
        return ScoreResult(values, errors)

    def identity(self) -> dict[str, Any]:
        return {"scorer": self.name, **self.config.model_dump()}
