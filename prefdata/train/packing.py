"""Padding-free forward passes: the real tokens of a right-padded batch, packed into one row.

A DPO batch holds rows of very different lengths: in `bench/train.py`'s HH-RLHF batches (8 rows,
chosen and rejected) about a third of the padded positions are padding, which a padded forward
computes, keeps for the backward pass and then throws away. `packed_hidden_states` runs the
decoder over the real tokens only: the rows are concatenated into one row of N tokens, position
ids restart at 0 for every row, and attention runs once per row over that row's span (causal SDPA
on its own keys and values). Every real token sees exactly what it sees in the padded pass (the
same positions, the same keys), so the log-probs are the padded path's to float rounding
(`tests/train/test_packing.py`), and each matmul is (rows x width - N) tokens smaller.

The spans reach the attention layers as a keyword argument (`prefdata_spans`) that transformers'
models pass down to their attention function (`AttentionInterface`); `use_packed_attention`
switches a model from `sdpa` to `PACKED_SDPA`, which is plain `sdpa` whenever no spans are given.
A model that does not pass the keyword down still computes the right numbers: its packed
`position_ids` make transformers build a block-diagonal causal mask (`PACKED_SDPA`'s mask is
`sdpa`'s), only without the saving in attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PACKED_SDPA = "prefdata_packed_sdpa"


def _packed_sdpa(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                 dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                 prefdata_spans: tuple[tuple[int, int], ...] | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' attention-function contract: query [1, heads, N, d], key/value [1, kv heads, N, d]
    -> ([1, N, heads, d], None). With spans: one causal SDPA per (start, end) span of the packed row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if prefdata_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    grouped = query.shape[1] != key.shape[1]
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], dropout_p=dropout, scale=scaling,
        is_causal=True, enable_gqa=grouped) for start, end in prefdata_spans]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def packed_attention(model: Any) -> bool:
    """Whether `model` runs `PACKED_SDPA` (so `response_logps` packs its batches). A PEFT model
    passes `config` and `set_attn_implementation` through to its base model."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == PACKED_SDPA


def use_packed_attention(model: Any) -> bool:
    """Switches `model` (a transformers model, or a PEFT model's base) from `sdpa` to `PACKED_SDPA`,
    which behaves as `sdpa` for every unpacked call. Other attention implementations (eager, flash)
    are left alone. Returns whether the model now packs. The choice is not saved with the model
    (transformers does not write the attention implementation to config.json)."""
    if packed_attention(model):
        return True
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    _register()
    model.set_attn_implementation(PACKED_SDPA)
    return packed_attention(model)


def packed_hidden_states(decoder: Any, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The decoder's final hidden states for the real tokens of a right-padded batch.

    input_ids, attention_mask [rows, width] -> (hidden [N, H] for the N real tokens, row by row;
    starts [rows]: where each row begins in it)."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    starts = torch.cumsum(lengths, dim=0) - lengths
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    spans = tuple((int(a), int(a + n)) for a, n in zip(starts.tolist(), lengths.tolist()))  # one host read per pass
    hidden = decoder(input_ids=input_ids[real][None], position_ids=positions[real][None], use_cache=False,
                     prefdata_spans=spans).last_hidden_state[0]
    return hidden, starts
