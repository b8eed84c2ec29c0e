"""The learning-rate schedule as a pure function of the step: linear warmup, then cosine decay.

lr(step) = peak * (step + 1) / warmup                                  for step < warmup
lr(step) = peak * (min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2) after, p = (step - warmup) / (total - warmup)

`step` counts optimizer steps from 0; the first step already has a non-zero rate (a zero first
step would waste a batch), and the last step (total - 1) is just above `min_ratio * peak`.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    if total < 1:
        raise ValueError(f"total steps must be >= 1, got {total}")
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup must be in [0, total], got {warmup} of {total}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if total == warmup:
        return peak
    progress = min(1.0, (step - warmup) / (total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_steps(total: int, ratio: float) -> int:
    """The warmup length for a share of the run (rounded up, so any ratio > 0 warms up at least one step)."""
    return min(total, math.ceil(total * ratio))
