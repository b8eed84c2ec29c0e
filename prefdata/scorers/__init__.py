"""Scorers: one value per response (`Scorer`) or per pair (`PairScorer`), or null with an error code.

`ScorerConfig` is the recipe-level union of every scorer's typed config (discriminated by
`type`). `make_scorer` builds a per-response scorer (what `on_policy` needs); `make_pair_scorer`
builds any scorer as a pair scorer (what the `score` stage's ensemble needs), wrapping
per-response scorers in `PointwisePairs`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, Field

from prefdata.scorers.base import (
    PairBatch,
    PairScorer,
    PairScoreResult,
    PointwisePairs,
    ScoreBatch,
    Scorer,
    ScoreResult,
)
from prefdata.scorers.flr import FLRConfig, FLRScorer
from prefdata.scorers.implicit_reward import ImplicitReward, ImplicitRewardConfig
from prefdata.scorers.judge import JudgeConfig, PointwiseJudge
from prefdata.scorers.pairwise_judge import PairwiseJudge, PairwiseJudgeConfig
from prefdata.scorers.reward_model import RewardModelConfig, RewardModelScorer
from prefdata.scorers.verifier import MathVerifier, VerifierConfig

ScorerConfig = Annotated[Union[JudgeConfig, VerifierConfig, FLRConfig, RewardModelConfig,  # noqa: UP007
                               ImplicitRewardConfig, PairwiseJudgeConfig], Field(discriminator="type")]

_SCORERS: dict[str, type[Scorer] | type[PairScorer]] = {
    "judge": PointwiseJudge,
    "verifier": MathVerifier,
    "flr": FLRScorer,
    "reward_model": RewardModelScorer,
    "implicit_reward": ImplicitReward,
    "pairwise_judge": PairwiseJudge,
}


def make_any_scorer(config: BaseModel) -> Scorer | PairScorer:
    kind = getattr(config, "type", None)
    if kind not in _SCORERS:
        raise KeyError(f"unknown scorer type {kind!r}; known: {sorted(_SCORERS)}")
    return _SCORERS[kind](config)


def make_scorer(config: BaseModel) -> Scorer:
    """A per-response scorer; pairwise scorers cannot rate one response and are refused here."""
    scorer = make_any_scorer(config)
    if not isinstance(scorer, Scorer):
        raise ValueError(f"scorer {config.type!r} compares two responses and cannot score one; "
                         "use it as a member of a `score` stage on pairs")
    return scorer


def make_pair_scorer(config: BaseModel) -> PairScorer:
    scorer = make_any_scorer(config)
    return scorer if isinstance(scorer, PairScorer) else PointwisePairs(scorer)


__all__ = ["FLRConfig", "FLRScorer", "ImplicitReward", "ImplicitRewardConfig", "JudgeConfig", "MathVerifier", "PairBatch", "PairScoreResult",
           "PairScorer", "PairwiseJudge", "PairwiseJudgeConfig", "PointwiseJudge", "PointwisePairs",
           "RewardModelConfig", "RewardModelScorer", "ScoreBatch", "ScoreResult", "Scorer", "ScorerConfig",
           "VerifierConfig", "make_any_scorer", "make_pair_scorer", "make_scorer"]
