"""Scorers: one value per response (or null with an error code), composable into builds.

`ScorerConfig` is the recipe-level union of every scorer's typed config (discriminated by
`type`); `make_scorer` builds the scorer a config names.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.scorers.flr import FLRConfig, FLRScorer
from prefdata.scorers.judge import JudgeConfig, PointwiseJudge
from prefdata.scorers.verifier import MathVerifier, VerifierConfig

ScorerConfig = Annotated[Union[JudgeConfig, VerifierConfig, FLRConfig], Field(discriminator="type")]  # noqa: UP007

_SCORERS = {"judge": PointwiseJudge, "verifier": MathVerifier, "flr": FLRScorer}


def make_scorer(config: JudgeConfig | VerifierConfig | FLRConfig) -> Scorer:
    return _SCORERS[config.type](config)


__all__ = ["FLRConfig", "FLRScorer", "JudgeConfig", "MathVerifier", "PointwiseJudge", "ScoreBatch", "ScoreResult", "Scorer", "ScorerConfig",
           "VerifierConfig", "make_scorer"]
