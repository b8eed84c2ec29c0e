"""Reward transform and combination: u = logsig(r - r_ref(x)), summed over criteria.

Paper: Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large Language Models"
(arXiv 2402.00742). A Bradley-Terry reward r(x, y) is only defined up to a per-prompt constant,
so it is centred on a reference reward r_ref(x) and passed through the log-sigmoid:

    u(x, y) = log sigma(r(x, y) - r_ref(x))

u is the log-probability that y beats the reference, so it saturates above it (no reward for
being "even better" at one criterion) and is steep below it. Criteria combine by summing their
u (a logical AND: sum_k log P(y beats ref_k) = log P(y beats all refs), treating them as
independent), so a response must be good on every criterion, not excellent on one.

r_ref(x) is a per-prompt quantile of rewards of responses sampled for x (the paper uses the
reward of a reference policy's samples; a high quantile asks more of a response).

Decisions: quantiles interpolate linearly between order statistics (numpy's default, so the
median of two rewards is their midpoint); a prompt with no scored sample has no reference and
its transformed rewards are None, never a default centre. Pure functions, no state.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

CITATION = """@article{wang2024transforming,
  title={Transforming and Combining Rewards for Aligning Large Language Models},
  author={Wang, Zihao and Nagpal, Chirag and Berant, Jonathan and Eisenstein, Jacob and D'Amour, Alex and Koyejo, Sanmi and Veitch, Victor},
  journal={arXiv preprint arXiv:2402.00742},
  year={2024}
}"""


def logsig(z: float) -> float:
    """log sigma(z), stable for large |z| (log sigma(z) = -log(1 + e^-z) = min(z, 0) - log1p(e^-|z|))."""
    return min(z, 0.0) - math.log1p(math.exp(-abs(z)))


def transform(reward: float, reference: float) -> float:
    """u = logsig(r - r_ref)."""
    return logsig(reward - reference)


def quantile_reference(rewards: Sequence[float], q: float = 0.5) -> float:
    """r_ref: the q-quantile of a prompt's sampled rewards (linear interpolation)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if len(rewards) == 0:
        raise ValueError("a reference needs at least one sampled reward")
    return float(np.quantile(np.asarray(rewards, dtype=np.float64), q))


def per_prompt_references(prompt_keys: Sequence[Hashable], rewards: Sequence[float | None],
                          q: float = 0.5) -> dict[Hashable, float]:
    """r_ref(x) for every prompt with at least one non-null reward: the q-quantile of its rewards."""
    if len(prompt_keys) != len(rewards):
        raise ValueError(f"{len(prompt_keys)} prompt keys but {len(rewards)} rewards")
    groups: dict[Hashable, list[float]] = {}
    for key, reward in zip(prompt_keys, rewards):
        if reward is not None:
            groups.setdefault(key, []).append(reward)
    return {key: quantile_reference(values, q) for key, values in groups.items()}


def transform_rewards(prompt_keys: Sequence[Hashable], rewards: Sequence[float | None],
                      q: float = 0.5) -> list[float | None]:
    """u for each (prompt, reward) sample, r_ref being the q-quantile of the same prompt's rewards."""
    references = per_prompt_references(prompt_keys, rewards, q)
    return [None if r is None else transform(r, references[k]) for k, r in zip(prompt_keys, rewards)]


def combine(transformed: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Sum of transformed rewards across criteria (`transformed[k][i]`: criterion k, response i).

    A response missing any criterion gets None: an AND over criteria cannot skip one.
    """
    if not transformed:
        raise ValueError("nothing to combine")
    n = len(transformed[0])
    if any(len(column) != n for column in transformed):
        raise ValueError("every criterion needs one value per response")
    out: list[float | None] = []
    for i in range(n):
        values = [column[i] for column in transformed]
        out.append(None if any(v is None for v in values) else float(sum(values)))
    return out


def pair_margin(d: float, q: float = 0.5) -> float:
    """u(chosen) - u(rejected) for a pair whose only samples are its two responses, from d = r+ - r-.

    Rewards are shift-invariant, so take r- = 0, r+ = d: r_ref = min(0, d) + q |d| (the q-quantile
    of the two), and u+ - u- = logsig(d - r_ref) - logsig(-r_ref). At q = 1/2 this is d/2
    (logsig(a) - logsig(-a) = a). Used for pairwise judges, which give only d.
    """
    reference = min(0.0, d) + q * abs(d)
    return transform(d, reference) - transform(0.0, reference)
