"""Chunked log-probs: the same values and gradients as the full-logits path, and the same training run."""

from __future__ import annotations

import copy

import pytest
import torch

from prefdata.train import TrainConfig, train
from prefdata.train.data import EncodeSpec, collate, encode_pairs, load_pairs
from prefdata.train.logps import ChunkedTokenLogps, chunked_token_logps, response_logps

from .conftest import make_tiny_llama


def _batch(hh_dataset, tokenizer, n=6):
    encoded = encode_pairs(load_pairs(hh_dataset), tokenizer, EncodeSpec(max_length=1024))
    return collate(encoded.examples[:n], tokenizer.pad_token_id)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_function_matches_log_softmax_in_values_and_gradients(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    head = torch.nn.Linear(16, 300, bias=True)
    targets = torch.randint(0, 300, (3, 11))
    upstream = torch.randn(3, 11)

    full = torch.log_softmax(head(hidden), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    grads_full = torch.autograd.grad((full * upstream).sum(), (hidden, head.weight, head.bias))
    mine = chunked_token_logps(hidden, head, targets, chunk)
    grads_mine = torch.autograd.grad((mine * upstream).sum(), (hidden, head.weight, head.bias))
    torch.testing.assert_close(mine, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_mine, grads_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_function_passes_gradcheck_in_double():
    """The analytic backward against finite differences (double in, fp32 compute: loose tolerance)."""
    torch.manual_seed(1)
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    targets = torch.randint(0, 9, (5,))
    out = ChunkedTokenLogps.apply(hidden, weight, None, targets, 2)
    g = torch.randn(5)
    gh, gw = torch.autograd.grad((out * g).sum(), (hidden, weight))
    p = torch.softmax(hidden @ weight.T, -1)
    onehot = torch.nn.functional.one_hot(targets, 9).float()
    expected = (onehot - p) * g[:, None]
    torch.testing.assert_close(gh, expected @ weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, expected.T @ hidden, atol=1e-5, rtol=1e-5)


def test_response_logps_chunked_equals_full_path_values_and_gradients(hh_dataset, smol_tokenizer):
    """A tiny random Llama (tied=False, fp32): summed response log-probs and every parameter's gradient agree to 1e-5."""
    model = make_tiny_llama(smol_tokenizer, seed=3)
    twin = copy.deepcopy(model)
    batch = _batch(hh_dataset, smol_tokenizer)
    full = response_logps(model, batch, chunk_size=0)
    chunked = response_logps(twin, batch, chunk_size=13)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-6)
    weights = torch.linspace(-1, 1, full.shape[0])
    (full * weights).sum().backward()
    (chunked * weights).sum().backward()
    compared = 0
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert compared > 10 and model.lm_head.weight.grad.abs().sum() > 0


def test_response_logps_chunked_equals_full_on_smollm2_tied_head(hh_dataset, smol_tokenizer):
    """The embedded SmolLM2-135M (tied embeddings): values to 1e-5 relative and the head gradient agree."""
    from prefdata.train.logps import load_causal_lm

    model, _, _ = load_causal_lm(None, torch.device("cpu"))
    batch = _batch(hh_dataset, smol_tokenizer, n=2)
    full = response_logps(model, batch, chunk_size=0)
    (full.sum()).backward()
    grad_full = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    chunked = response_logps(model, batch, chunk_size=64)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full, atol=1e-3, rtol=1e-5)  # sums of ~100 tokens of order -1e2
    torch.testing.assert_close(model.model.embed_tokens.weight.grad, grad_full, atol=1e-5, rtol=1e-3)


def test_training_with_chunks_follows_the_full_path_loss_curve(hh_dataset, tiny_model_dir, tmp_path):
    common = {"dataset": hh_dataset, "model": str(tiny_model_dir), "max_steps": 6, "batch_size": 3, "lr": 1e-2,
              "warmup_ratio": 0.0, "save_final": False, "reference": "model", "precision": "fp32"}
    full = train(TrainConfig(output_dir=tmp_path / "full", logps_chunk=0, **common), progress=False)
    chunked = train(TrainConfig(output_dir=tmp_path / "chunked", logps_chunk=5, **common), progress=False)
    checkpointed = train(TrainConfig(output_dir=tmp_path / "ckpt", logps_chunk=5, gradient_checkpointing=True, **common),
                         progress=False)
    losses = [[m["loss"] for m in r.metrics] for r in (full, chunked, checkpointed)]
    assert losses[0][-1] < losses[0][0] - 0.05  # it learns, so equal curves are not trivially flat
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], abs=1e-4)


def test_soft_capped_logits_take_the_full_path_and_stay_exact(hh_dataset, smol_tokenizer):
    """Gemma-2's final_logit_softcapping (logits = c * tanh(logits / c)) is not a plain linear head: the
    chunked path would skip the cap, so response_logps falls back to the model's own logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from prefdata.train.logps import _chunkable

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                          pad_token_id=smol_tokenizer.pad_token_id, tie_word_embeddings=False)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # logits of order 10, so the cap at 2 bites
    assert _chunkable(model) is None
    batch = _batch(hh_dataset, smol_tokenizer, n=3)
    with torch.no_grad():
        got = response_logps(model, batch, chunk_size=7)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        direct = (per_token * batch["loss_weights"][:, 1:]).sum(-1)
        # what a plain linear head (no cap) would give: far from the capped numbers
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        uncapped = torch.log_softmax(model.lm_head(hidden)[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        uncapped = (uncapped * batch["loss_weights"][:, 1:]).sum(-1)
    torch.testing.assert_close(got, direct, atol=1e-4, rtol=1e-5)
    assert (got - uncapped).abs().max() > 1.0
