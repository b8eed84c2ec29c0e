"""Turning n scored responses to one prompt into preference pairs.

Strategies (RLHFlow's names; `ranked` is OSP/Curry-DPO's ordering):

* `max_min`: the best against the worst.
* `max_random`: the best against a random response with a lower score.
* `random`: a random pair of responses with different scores, oriented by score.
* `ranked`: the best against every response with a lower score: up to n-1 pairs with
  `rank` 0 for the largest score gap (easiest) upward.

Rules shared by every strategy: a response with a null score never enters a pair; two
responses with equal scores are never paired (a tie says nothing about preference); responses
with identical text count once (the first one kept), so chosen == rejected cannot happen. What
each rule removed is counted.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefdata.types import PairingStrategy


@dataclass(frozen=True)
class Pair:
    chosen: int  # index into the prompt's responses
    rejected: int
    rank: int = 0  # 0 = largest score gap among this prompt's pairs


@dataclass
class PairingResult:
    pairs: list[Pair]
    counts: Counter = field(default_factory=Counter)


def make_pairs(scores: Sequence[float | None], texts: Sequence[str], strategy: PairingStrategy | str,
               rng: random.Random, min_margin: float = 0.0) -> PairingResult:
    """Pairs for one prompt. `min_margin`: a pair needs chosen - rejected > min_margin."""
    strategy = PairingStrategy(strategy)
    counts: Counter = Counter()
    valid: list[int] = []
    seen_texts: set[str] = set()
    for i, (score, text) in enumerate(zip(scores, texts, strict=True)):
        if score is None or not math.isfinite(score):
            counts["null_scores"] += 1
            continue
        key = text.strip()
        if key in seen_texts:
            counts["duplicate_responses"] += 1
            continue
        seen_texts.add(key)
        valid.append(i)

    def better(a: int, b: int) -> bool:
        return scores[a] - scores[b] > min_margin

    pairs: list[Pair] = []
    if len(valid) < 2:
        counts["no_pair_too_few_scored"] += 1
        return PairingResult(pairs, counts)
    best = max(valid, key=lambda i: (scores[i], -i))
    worst = min(valid, key=lambda i: (scores[i], i))
    if strategy == PairingStrategy.MAX_MIN:
        if better(best, worst):
            pairs.append(Pair(best, worst))
    elif strategy == PairingStrategy.MAX_RANDOM:
        lower = [i for i in valid if better(best, i)]
        if lower:
            pairs.append(Pair(best, rng.choice(lower)))
    elif strategy == PairingStrategy.RANDOM:
        candidates = [(a, b) for a in valid for b in valid if better(a, b)]
        if candidates:
            a, b = rng.choice(candidates)
            pairs.append(Pair(a, b))
    else:  # RANKED
        lower = sorted((i for i in valid if i != best and better(best, i)), key=lambda i: (scores[i], i))
        pairs = [Pair(best, i, rank) for rank, i in enumerate(lower)]
        counts["ties_with_best"] += sum(1 for i in valid if i != best and not better(best, i))
    if not pairs:
        counts["no_pair_all_tied"] += 1
    counts["pairs"] += len(pairs)
    return PairingResult(pairs, counts)
