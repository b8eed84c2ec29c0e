"""The model side of training and evaluation: load a causal LM, run one concatenated forward over a
batch from `prefdata.train.data.collate`, and return each row's summed response log-probability.

Two paths give the same numbers (tests check values and gradients to 1e-5 in fp32):

* **chunked** (default, `chunk_size > 0`): the decoder returns its final hidden states h; only the
  response positions (from the batch's earliest response position on) go through the LM head, a
  chunk of `chunk_size` positions at a time: logits_c = h_c W^T, log p(y_t) = logits_c[y_t] -
  logsumexp(logits_c), in fp32. `ChunkedTokenLogps` is a custom autograd function whose backward
  recomputes each chunk's logits and forms d h_c = (onehot(y) - softmax(logits_c)) g W and
  d W += (...)^T h_c, so neither pass ever holds the full [rows, positions, vocab] logits (TRL and
  the plain path hold them, their log-softmax and their gradient: with a 49k vocabulary these
  dominate a small model's activation memory). Models whose output layer is not a plain linear
  map of the final hidden states (logit soft-capping or scaling) use the full path.
  On a model switched to packed attention (`prefdata.train.packing.use_packed_attention`: the
  trainer's default, `padding_free`), a right-padded batch's real tokens run as one packed row and
  the LM head sees only the positions that predict a real token: no pass computes padding.
* **full** (`chunk_size = 0`): the model's own forward with `logits_to_keep`, then log-softmax.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefdata.train.losses import sequence_logps
from prefdata.train.packing import packed_attention, packed_hidden_states
from prefdata.types import Precision


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_bf16(precision: Precision, device: torch.device) -> bool:
    if precision == Precision.BF16:
        return True
    if precision == Precision.AUTO:
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


def autocast(precision: Precision, device: torch.device):
    """bf16 autocast (fp32 master weights) or nothing."""
    if use_bf16(precision, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str | None, device: torch.device, trust_remote_code: bool = False) -> tuple[Any, Any, str]:
    """(model in fp32, tokenizer, resolved path). `name` is a hub id, a folder, an embedded name or
    None (the embedded SmolLM2). A folder holding a LoRA adapter (a training checkpoint) is loaded
    on its base model and merged."""
    from transformers import AutoModelForCausalLM

    from prefdata.engines.embedded import resolve_model

    path = resolve_model(name)
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    return model.to(device), load_tokenizer(path, trust_remote_code), path


DEFAULT_CHUNK = 512  # positions per LM-head chunk: 512 x 49k vocab x 4 bytes = 100 MB of logits


class ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h W^T + b)[y] per position, over chunks of positions, with a chunked backward.

    hidden [P, H] (any float dtype; computed in fp32), weight [V, H], bias [V] or None, targets [P]
    -> [P] fp32 log-probs. Saves only hidden, weight, targets and the per-position logsumexp."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 log-probs, also under bf16 autocast
            return ChunkedTokenLogps._forward(ctx, hidden, weight, bias, targets, chunk)

    @staticmethod
    def _forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int) -> Tensor:
        w = weight.float()
        b = bias.float() if bias is not None else None
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].float()
            logits = h @ w.T
            if b is not None:
                logits += b
            lse[start : start + chunk] = logits.logsumexp(dim=-1)
            out[start : start + chunk] = logits.gather(-1, targets[start : start + chunk, None]).squeeze(-1)
        out -= lse
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return ChunkedTokenLogps._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
        w = weight.float()
        b = bias.float() if bias is not None else None
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros_like(b) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            h = hidden[start:stop].float()
            logits = h @ w.T
            if b is not None:
                logits += b
            g = grad_out[start:stop].float()
            # d out / d logits = onehot(y) - softmax(logits); scaled by the incoming gradient g
            grad_logits = (logits - lse[start:stop, None]).exp_().mul_(-g[:, None])
            grad_logits.scatter_add_(-1, targets[start:stop, None], g[:, None])
            if need_h:
                grad_h[start:stop] = grad_logits @ w
            if need_w:
                grad_w.addmm_(grad_logits.T, h)
            if need_b:
                grad_b += grad_logits.sum(0)
        return (grad_h.to(hidden.dtype) if need_h else None, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def chunked_token_logps(hidden: Tensor, lm_head: torch.nn.Linear, targets: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Per-position log-probs of `targets` [N, T] under `lm_head` applied to `hidden` [N, T, H] -> [N, T] fp32."""
    n, t, _ = hidden.shape
    flat = ChunkedTokenLogps.apply(hidden.reshape(n * t, -1), lm_head.weight, lm_head.bias, targets.reshape(-1), chunk)
    return flat.view(n, t)


def base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunkable(model: Any) -> tuple[Any, torch.nn.Linear] | None:
    """(decoder, lm_head) when the logits are a plain linear map of the decoder's final hidden states."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    config = getattr(base, "config", None)
    if type(head) is not torch.nn.Linear or decoder is None or decoder is base:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    return decoder, head


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def causal_only(attention_mask: Tensor) -> Tensor | None:
    """None for a right-padded batch (each row: ones, then zeros), else the mask. With right padding the
    causal mask alone is exact for every real token (none attends to a later position; pads only
    attend, and are weighted out), and it lets SDPA run its causal kernel on the grouped K/V heads
    instead of a padding mask per layer and K/V repeated to every head (kept for the backward pass)."""
    return None if bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()) else attention_mask


def response_logps(model: Any, batch: dict[str, Any], rows: int | None = None, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Summed (token-weighted) response log-probs of the first `rows` rows of a batch (all by default), [N].

    `chunk_size` positions per LM-head chunk (0 = the full-logits path)."""
    device = next(model.parameters()).device
    n = rows if rows is not None else batch["input_ids"].shape[0]
    input_ids = batch["input_ids"][:n].to(device)
    mask = batch["attention_mask"][:n].to(device)
    attention_mask = causal_only(mask)
    weights = batch["loss_weights"][:n].to(device)
    first = batch["first_response"]  # logits at position t predict token t+1: keep from first-1 on
    width = input_ids.shape[1]
    targets = input_ids[:, first:]
    parts = _chunkable(model) if chunk_size > 0 else None
    if parts is not None and attention_mask is None and packed_attention(model) and _accepts_keywords(parts[0]):
        return _packed_response_logps(*parts, input_ids, mask, weights, first, chunk_size)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        per_token = chunked_token_logps(hidden[:, first - 1 : -1], head, targets, chunk_size)
        return sequence_logps(per_token, weights[:, first:])
    if _accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=width - first + 1).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, first - 1:]
    logits = logits[:, :-1].float()  # positions first-1 .. T-2 predict tokens first .. T-1
    per_token = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return sequence_logps(per_token, weights[:, first:])


def _packed_response_logps(decoder: Any, head: torch.nn.Linear, input_ids: Tensor, attention_mask: Tensor,
                           weights: Tensor, first: int, chunk_size: int) -> Tensor:
    """`response_logps` on the real tokens only (`prefdata.train.packing`): the LM head runs on the
    positions whose next token is a real response-side token, the rest stay 0 (weight 0)."""
    hidden, starts = packed_hidden_states(decoder, input_ids, attention_mask)
    predicted = attention_mask[:, first:].bool()  # [rows, P]: position t-1 predicts real token t
    steps = torch.arange(first - 1, input_ids.shape[1] - 1, device=input_ids.device)
    where = (starts[:, None] + steps[None, :])[predicted]  # packed index of each predicting position
    per_real = chunked_token_logps(hidden[where][None], head, input_ids[:, first:][predicted][None], chunk_size)[0]
    per_token = per_real.new_zeros(predicted.shape).masked_scatter(predicted, per_real)
    return sequence_logps(per_token, weights[:, first:])


def _accepts_keywords(module: Any) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(module.forward).parameters.values())


# --- references: where a batch's reference log-probs come from (the trainer and `evaluate`) ---

Reference = Callable[[dict[str, Any]], tuple[Tensor, Tensor]]


def columns_reference(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The dataset's precomputed reference log-probs (the `reference_logps` stage)."""
    return batch["ref_chosen_logps"], batch["ref_rejected_logps"]


def model_reference(model: Any, chunk_size: int = DEFAULT_CHUNK) -> Reference:
    """Reference log-probs from a frozen model, on the fly (chosen and rejected rows only; the
    caller's autocast applies, as in TRL)."""

    def reference(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        B = batch["n_pairs"]
        with torch.no_grad():
            logps = response_logps(model, batch, rows=2 * B, chunk_size=chunk_size)
        return logps[:B], logps[B:]

    return reference


def adapter_disabled_reference(peft_model: Any, chunk_size: int = DEFAULT_CHUNK) -> Reference:
    """Reference = the base model under LoRA adapters (adapters switched off), with no second copy."""
    inner = model_reference(peft_model, chunk_size)

    def reference(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        with peft_model.disable_adapter():
            return inner(batch)

    return reference
