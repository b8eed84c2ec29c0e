"""The lean SwiGLU backward: the same gradients as autograd's, less kept for the backward pass, and
only on the MLPs it fits; a right-padded batch runs with the causal mask alone, to the same numbers."""

from __future__ import annotations

import copy

import torch

from prefdata.train.data import EncodeSpec, collate, encode_pairs, load_pairs
from prefdata.train.lean_mlp import LeanSwiGLU, is_swiglu, use_lean_mlp
from prefdata.train.logps import causal_only, response_logps

from .conftest import make_tiny_llama


def saved_bytes(run) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of `run()`, parameters excluded."""
    kept: dict[int, int] = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            kept.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return sum(kept.values()), out


def test_lean_swiglu_gradients_are_autograds():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((12, 8), (12, 8), (8, 12))]
    assert torch.autograd.gradcheck(LeanSwiGLU.apply, (x, *weights))


def test_lean_model_trains_on_the_same_gradients_and_keeps_less(hh_dataset, smol_tokenizer):
    model = make_tiny_llama(smol_tokenizer, seed=5)
    lean = copy.deepcopy(model)
    assert use_lean_mlp(lean) == 2 and use_lean_mlp(torch.nn.Linear(3, 3)) == 0
    encoded = encode_pairs(load_pairs(hh_dataset), smol_tokenizer, EncodeSpec(max_length=1024))
    batch = collate(encoded.examples[:4], smol_tokenizer.pad_token_id)
    plain_bytes, plain = saved_bytes(lambda: response_logps(model, batch, chunk_size=0))
    lean_bytes, mine = saved_bytes(lambda: response_logps(lean, batch, chunk_size=0))
    torch.testing.assert_close(mine, plain, atol=1e-5, rtol=1e-6)
    # silu(gate) and its product with up are no longer kept: 2 x [rows, positions, 64] floats per layer
    rows, positions = batch["input_ids"].shape
    assert plain_bytes - lean_bytes >= 2 * 2 * rows * positions * 64 * 4
    weights = torch.linspace(-1, 1, plain.shape[0])
    (plain * weights).sum().backward()
    (mine * weights).sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # evaluation takes the module's own forward
        torch.testing.assert_close(response_logps(lean, batch, chunk_size=0), plain.detach(), atol=1e-5, rtol=1e-6)


def test_only_plain_swiglu_mlps_take_the_lean_backward(smol_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(smol_tokenizer)
    mlp = model.model.layers[0].mlp
    assert is_swiglu(mlp)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["gate_proj"]))
    assert use_lean_mlp(wrapped) == 0  # a LoRA-wrapped projection keeps its own forward
    mlp.act_fn = torch.nn.GELU()
    assert not is_swiglu(mlp)


def test_right_padding_needs_only_the_causal_mask(hh_dataset, smol_tokenizer, monkeypatch):
    from prefdata.train import logps

    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert causal_only(right) is None
    for mask in (torch.tensor([[0, 1, 1, 1]]), torch.tensor([[1, 0, 1, 1]])):  # left padding, a hole
        assert causal_only(mask) is mask
    model = make_tiny_llama(smol_tokenizer, seed=2)
    encoded = encode_pairs(load_pairs(hh_dataset), smol_tokenizer, EncodeSpec(max_length=1024))
    batch = collate(encoded.examples[:4], smol_tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # the batch is padded
    with torch.no_grad():
        causal = response_logps(model, batch, chunk_size=0)
        monkeypatch.setattr(logps, "causal_only", lambda mask: mask)  # the padding mask in every layer
        masked = response_logps(model, batch, chunk_size=0)
    torch.testing.assert_close(causal, masked, atol=1e-5, rtol=1e-6)
