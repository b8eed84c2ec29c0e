"""Scorer fixtures: a tiny reward model folder (random weights, SmolLM2 tokenizer and chat template)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rm_folder(tmp_path_factory):
    """A small random LlamaForSequenceClassification saved with the SmolLM2 tokenizer, loaded by
    tests through the real `from_pretrained` path. Its config has no pad token, as many RMs ship:
    the scorer must set one to batch."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from prefdata.engines.embedded import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a head with visible spread between inputs
    folder = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
