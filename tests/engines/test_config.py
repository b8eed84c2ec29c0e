"""Engine settings decided at load time: an unset dtype becomes the device's native one, and what
ran is what the run identity records."""

from __future__ import annotations

import pytest
import torch

from prefdata.engines import EngineConfig
from prefdata.engines.config import native_dtype
from prefdata.engines.identity import config_identity
from prefdata.engines.transformers_engine import TransformersEngine


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (False, False, "float32"), (True, False, "bfloat16"), (False, True, "bfloat16")])
def test_cpu_dtype_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_dtype(on_gpu=False) == expected
    assert native_dtype(on_gpu=True) == "bfloat16"
    assert EngineConfig(backend="transformers").resolved().dtype == expected
    assert EngineConfig(backend="vllm").resolved().dtype == expected
    assert EngineConfig(backend="transformers", dtype="float16").resolved().dtype == "float16"  # a stated dtype stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert EngineConfig(backend="vllm").resolved().dtype == "bfloat16"
    assert EngineConfig(backend="transformers").resolved().dtype == expected  # transformers loads onto the CPU


def test_an_unset_dtype_loads_the_native_one_and_the_identity_records_it():
    config = EngineConfig(backend="transformers")
    engine = TransformersEngine(config)
    native = native_dtype(on_gpu=False)
    assert str(next(engine.model.parameters()).dtype) == f"torch.{native}"
    assert engine.identity()["config"]["dtype"] == native  # the cache and checkpoints key on what ran
    assert engine.identity()["config"]["forward_batch_size"] == 1
    # what a resumed build (Ray's driver) computes without loading the engine is the same identity
    assert config_identity(config) == engine.identity()


class _Loaded(Exception):
    """Raised by the model spy: what was asked is recorded, no weights are loaded."""


@pytest.mark.parametrize("trusted", [False, True])
def test_trust_remote_code_is_off_by_default_and_reaches_the_transformers_loaders(monkeypatch, trusted):
    """README: `trust_remote_code` stays off unless you set it (hub model code runs only then)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert EngineConfig().trust_remote_code is False
    assert EngineConfig.model_validate({"backend": "transformers"}).trust_remote_code is False
    seen = {}
    load_tokenizer = AutoTokenizer.from_pretrained

    def tokenizer_spy(*args, **kwargs):
        seen["tokenizer"] = kwargs.get("trust_remote_code")
        return load_tokenizer(*args, **kwargs)

    def model_spy(*args, **kwargs):
        seen["model"] = kwargs.get("trust_remote_code")
        raise _Loaded

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_spy)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_spy)
    config = EngineConfig(backend="transformers", dtype="float32", **({"trust_remote_code": True} if trusted else {}))
    with pytest.raises(_Loaded):
        TransformersEngine(config)
    assert seen == {"tokenizer": trusted, "model": trusted}
