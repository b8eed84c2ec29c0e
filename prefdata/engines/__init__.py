"""Engines behind one narrow interface (`Engine`): vLLM (default), transformers, and served models
(`openai`: any OpenAI-compatible server).

Heavy libraries are imported when an engine is loaded, not when prefdata is imported.
"""

from __future__ import annotations

from pathlib import Path

from prefdata.engines.base import Completion, ContextLengthError, Engine, SamplingParams, derive_seed
from prefdata.engines.chat import ChatFormatter
from prefdata.engines.config import EngineConfig
from prefdata.schemas.errors import PrefdataError
from prefdata.types import EngineBackend

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


class ModelError(PrefdataError):
    """A model that cannot be loaded for a reason the user can fix (named in one line)."""


def check_model_folder(model: str | None) -> None:
    """A local model folder must hold weights: say so in one line instead of a library traceback."""
    if model is None or not Path(model).is_dir():
        return
    folder = Path(model)
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelError(f"{folder}: model folder has no weights ({', '.join(WEIGHT_PATTERNS)}); "
                         "is the download incomplete?")


def has_logprobs(engine: Engine) -> bool:
    """Whether an engine returns log-probabilities: in-process engines always do; a served engine
    says so in its probed `capabilities` (judges switch to text mode when it does not)."""
    capabilities = getattr(engine, "capabilities", None)
    return True if capabilities is None else bool(capabilities.get("logprobs", False))


def load_engine(config: EngineConfig | None = None) -> Engine:
    """Load the engine a config names (the same loading path for hub ids, folders and embedded models)."""
    config = config or EngineConfig()
    if config.backend == EngineBackend.OPENAI:
        from prefdata.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(config)
    check_model_folder(config.model)
    if config.backend == EngineBackend.VLLM:
        from prefdata.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    from prefdata.engines.transformers_engine import TransformersEngine

    return TransformersEngine(config)


__all__ = ["ChatFormatter", "Completion", "ContextLengthError", "Engine", "EngineConfig", "ModelError", "SamplingParams",
           "check_model_folder", "derive_seed", "has_logprobs", "load_engine"]
