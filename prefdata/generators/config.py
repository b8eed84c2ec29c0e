"""Config pieces shared by generators."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.base import SamplingParams


class SamplingConfig(BaseModel):
    """Sampling settings of a generator (mapped to each engine's own parameters inside the engine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.8, ge=0, description="Softmax temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="Top-k truncation (0 = off)")
    max_tokens: int = Field(256, ge=1, description="Maximum new tokens per response")
    stop: tuple[str, ...] = Field((), description="Stop strings (not included in the response)")

    def params(self, n: int, seed: int | None) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_tokens=self.max_tokens, stop=self.stop, seed=seed)
