"""Engines behind one narrow interface (`Engine`): vLLM (default) and transformers.

Heavy libraries are imported when an engine is loaded, not when prefdata is imported.
"""

from __future__ import annotations

from prefdata.engines.base import Completion, ContextLengthError, Engine, SamplingParams, derive_seed
from prefdata.engines.chat import ChatFormatter
from prefdata.engines.config import EngineConfig
from prefdata.types import EngineBackend


def load_engine(config: EngineConfig | None = None) -> Engine:
    """Load the engine a config names (the same loading path for hub ids, folders and embedded models)."""
    config = config or EngineConfig()
    if config.backend == EngineBackend.VLLM:
        from prefdata.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    from prefdata.engines.transformers_engine import TransformersEngine

    return TransformersEngine(config)


__all__ = ["ChatFormatter", "Completion", "ContextLengthError", "Engine", "EngineConfig", "SamplingParams",
           "derive_seed", "load_engine"]
