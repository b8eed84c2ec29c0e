"""TRL reads prefdata's output unchanged: one DPOTrainer step on a tiny model."""

from __future__ import annotations

import copy
import math

import pytest

import prefdata
from prefdata.builder import run_build

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def built_dataset(hf_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("trl") / "out"
    recipe = {
        "source": {"path": str(FIXTURES / "prompts_small.jsonl")},
        "engines": {"policy": {"backend": "transformers"}},
        "stages": [{"type": "on_policy", "n": 3, "strategy": "ranked", "sampling": {"max_tokens": 12, "temperature": 1.0}}],
        "output": {"dir": str(out)},
    }
    run_build(recipe, engines={"policy": hf_engine})
    return prefdata.load(out)


def dpo_one_step(dataset, tokenizer, tmp_path, max_length: int = 256) -> float:
    """One DPOTrainer step of a tiny random Llama on `dataset` (as prefdata wrote it); checks the
    loss is log 2 at step 0 (policy == reference) and the weights moved. Other tests reuse it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=1, use_cpu=True,
                     bf16=False, report_to=[], logging_steps=1, save_strategy="no", max_length=max_length)
    reference = copy.deepcopy(model)  # an in-memory model has no hub id to reload the reference from
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and math.isfinite(logs[0]["loss"])
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at step 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return logs[0]["loss"]


def test_dpo_trainer_takes_one_step_on_prefdata_output(built_dataset, hf_engine, tmp_path):
    assert len(built_dataset) >= 2
    assert "metadata" in built_dataset.column_names  # extra columns travel along and are ignored
    dpo_one_step(built_dataset, hf_engine.tokenizer, tmp_path)
