"""Stage names -> (typed config, stage class). The only place a recipe's `type` strings resolve.

Explicit entries rather than import-time decorators: importing a module never changes what a
recipe means, and this file lists every stage a recipe can name.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field

from prefdata.filters.ches import ChesConfig, ChesFilterConfig, ChesFilterStage, ChesStage
from prefdata.filters.dedup import DedupConfig, DedupStage
from prefdata.filters.noise import NoiseConfig, NoiseFilter
from prefdata.filters.voting import VotingConfig, VotingFilter
from prefdata.generators.flr import FLRPairsConfig, FLRPairsGenerator
from prefdata.generators.hindsight import HindsightConfig, HindsightGenerator
from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator
from prefdata.generators.rationale import RationaleConfig, RationaleStage
from prefdata.generators.reward_augmented import RewardAugmentedConfig, RewardAugmentedGenerator
from prefdata.generators.rise import RiseConfig, RiseGenerator
from prefdata.pipeline.stage import Stage
from prefdata.scorers.embedding_rm import EmbeddingRMConfig, EmbeddingRMStage
from prefdata.scorers.ensemble import ScoreConfig, ScoreStage
from prefdata.scorers.reference_logps import ReferenceLogpsConfig, ReferenceLogpsStage

STAGES: dict[str, tuple[type[BaseModel], type[Stage]]] = {
    "on_policy": (OnPolicyConfig, OnPolicyGenerator),
    "flr": (FLRPairsConfig, FLRPairsGenerator),
    "reward_augmented": (RewardAugmentedConfig, RewardAugmentedGenerator),
    "reference_logps": (ReferenceLogpsConfig, ReferenceLogpsStage),
    "score": (ScoreConfig, ScoreStage),
    "rise": (RiseConfig, RiseGenerator),
    "rationale": (RationaleConfig, RationaleStage),
    "hindsight": (HindsightConfig, HindsightGenerator),
    "embedding_rm": (EmbeddingRMConfig, EmbeddingRMStage),
    "voting": (VotingConfig, VotingFilter),
    "noise": (NoiseConfig, NoiseFilter),
    "ches": (ChesConfig, ChesStage),
    "ches_filter": (ChesFilterConfig, ChesFilterStage),
    "dedup": (DedupConfig, DedupStage),
}


def _stage_config_type() -> Any:
    configs = tuple(config for config, _ in STAGES.values())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007


StageConfig = _stage_config_type()


def make_stage(config: BaseModel) -> Stage:
    kind = getattr(config, "type", None)
    if kind not in STAGES:
        raise KeyError(f"unknown stage type {kind!r}; known: {sorted(STAGES)}")
    return STAGES[kind][1](config)
