"""Fixtures of the trainer tests: a small HH dataset built by prefdata's reader, and a tiny random
Llama (SmolLM2's tokenizer and chat template) saved as a local model folder."""

from __future__ import annotations

import pytest

from prefdata.builder import run_build

from ..conftest import FIXTURES


@pytest.fixture(scope="session")
def hh_dataset(tmp_path_factory):
    """12 HH-format pairs (one multi-turn) converted by `prefdata build` (kind = hh, no stages)."""
    out = tmp_path_factory.mktemp("hh") / "out"
    run_build({"name": "hh_small", "source": {"path": str(FIXTURES / "hh_train_small.jsonl"), "kind": "hh"},
               "output": {"dir": str(out)}})
    return out


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from prefdata.engines.embedded import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(None))


def make_tiny_llama(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A random 2-layer Llama folder (loads like any hub model; trains in milliseconds per step)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    make_tiny_llama(smol_tokenizer).save_pretrained(str(folder))
    smol_tokenizer.save_pretrained(str(folder))
    return folder
