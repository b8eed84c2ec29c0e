"""Padding-free passes: the packed real tokens give the padded batch's log-probs and gradients,
compute fewer positions, leave unpacked calls as plain SDPA, and are not saved with the model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from prefdata.train.data import EncodeSpec, collate, encode_pairs, load_pairs
from prefdata.train.logps import response_logps
from prefdata.train.packing import PACKED_SDPA, packed_attention, use_packed_attention

from .conftest import make_tiny_llama
from .test_lean_mlp import saved_bytes


@pytest.fixture
def batch(hh_dataset, smol_tokenizer):
    encoded = encode_pairs(load_pairs(hh_dataset), smol_tokenizer, EncodeSpec(max_length=1024))
    batch = collate(encoded.examples[:4], smol_tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < 0.8 * lengths.max()  # rows of different lengths: padding to skip
    return batch


@pytest.mark.parametrize("chunk", [512, 7])
def test_packed_logps_and_gradients_equal_the_padded_ones(batch, smol_tokenizer, chunk):
    padded = make_tiny_llama(smol_tokenizer, seed=3)  # 4 query heads on 2 K/V heads: grouped attention
    packed = copy.deepcopy(padded)
    assert use_packed_attention(packed) and packed_attention(packed) and not packed_attention(padded)
    padded_bytes, expected = saved_bytes(lambda: response_logps(padded, batch, chunk_size=chunk))
    packed_bytes, got = saved_bytes(lambda: response_logps(packed, batch, chunk_size=chunk))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    weights = torch.linspace(-1, 1, expected.shape[0])
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, a), (_, b) in zip(padded.named_parameters(), packed.named_parameters()):
        # float32 rounding: the LM-head chunks group other positions (the largest gradients are ~7)
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5 * float(a.grad.abs().max()), rtol=1e-5, msg=name)
    # activations kept for the backward pass scale with the positions computed
    real, total = int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    assert packed_bytes < padded_bytes * (real / total + 0.1)


def test_a_model_that_drops_the_spans_still_gets_the_padded_numbers(batch, smol_tokenizer, monkeypatch):
    """Without the spans, transformers' block-diagonal mask from the packed position ids keeps rows apart."""
    from prefdata.train import packing

    padded = make_tiny_llama(smol_tokenizer, seed=4)
    packed = copy.deepcopy(padded)
    use_packed_attention(packed)
    sdpa_only = packing._packed_sdpa

    def without_spans(*args, prefdata_spans=None, **kwargs):
        return sdpa_only(*args, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, PACKED_SDPA, without_spans)
    with torch.no_grad():
        torch.testing.assert_close(response_logps(packed, batch), response_logps(padded, batch), atol=1e-5, rtol=1e-6)


def test_unpacked_calls_are_plain_sdpa_and_the_choice_is_not_saved(batch, smol_tokenizer, tmp_path):
    padded = make_tiny_llama(smol_tokenizer, seed=5)
    packed = copy.deepcopy(padded)
    use_packed_attention(packed)
    left = {"input_ids": batch["input_ids"].flip(1), "attention_mask": batch["attention_mask"].flip(1)}  # left padded
    with torch.no_grad():
        torch.testing.assert_close(packed(**left).logits, padded(**left).logits, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(response_logps(packed, batch, chunk_size=0), response_logps(padded, batch, chunk_size=0))
    packed.save_pretrained(tmp_path / "saved")
    assert PACKED_SDPA not in json.dumps(json.loads((tmp_path / "saved" / "config.json").read_text()))
    eager = make_tiny_llama(smol_tokenizer)
    eager.set_attn_implementation("eager")
    assert not use_packed_attention(eager)  # only sdpa models are switched


def test_lora_model_packs_on_its_base(batch, smol_tokenizer):
    from peft import LoraConfig, get_peft_model

    plain = get_peft_model(make_tiny_llama(smol_tokenizer, seed=6), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    packed = copy.deepcopy(plain)
    assert use_packed_attention(packed) and packed_attention(packed)
    torch.testing.assert_close(response_logps(packed, batch), response_logps(plain, batch), atol=1e-5, rtol=1e-6)


def test_training_padding_free_follows_the_padded_loss_curve(hh_dataset, tiny_model_dir, tmp_path):
    from prefdata.train import TrainConfig, train

    common = {"dataset": hh_dataset, "model": str(tiny_model_dir), "max_steps": 6, "batch_size": 3, "lr": 1e-2,
              "warmup_ratio": 0.0, "save_final": False, "reference": "model", "precision": "fp32"}
    padded = train(TrainConfig(output_dir=tmp_path / "padded", padding_free=False, **common), progress=False)
    packed = train(TrainConfig(output_dir=tmp_path / "packed", **common), progress=False)
    checkpointed = train(TrainConfig(output_dir=tmp_path / "ckpt", gradient_checkpointing=True, **common), progress=False)
    losses = [[m["loss"] for m in r.metrics] for r in (padded, packed, checkpointed)]
    assert losses[0][-1] < losses[0][0] - 0.05  # it learns, so equal curves are not trivially flat
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], abs=1e-4)


def test_eval_runs_the_models_it_loads_padding_free(hh_dataset, tiny_model_dir, monkeypatch):
    from prefdata.train import EvalConfig, evaluate, logps

    packed_passes: list[int] = []
    real = logps.packed_hidden_states
    monkeypatch.setattr(logps, "packed_hidden_states",
                        lambda decoder, ids, mask: packed_passes.append(ids.shape[0]) or real(decoder, ids, mask))
    metrics = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir),
                                  alpha=0.5))
    assert metrics["pairs"] == 12 and sum(packed_passes) >= 2 * 12  # every chosen and rejected row went packed
