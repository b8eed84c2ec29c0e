"""The model side of training and evaluation: load a causal LM, run one concatenated forward over a
batch from `prefdata.train.data.collate`, and return each row's summed response log-probability.

The LM head runs only from the earliest response position of the batch on (`logits_to_keep`),
not over the shared prompt positions, where the model supports it; log-probs are taken in fp32.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefdata.train.losses import sequence_logps
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


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def response_logps(model: Any, batch: dict[str, Any], rows: int | None = None) -> Tensor:
    """Summed (token-weighted) response log-probs of the first `rows` rows of a batch (all by default), [N]."""
    device = next(model.parameters()).device
    n = rows if rows is not None else batch["input_ids"].shape[0]
    input_ids = batch["input_ids"][:n].to(device)
    attention_mask = batch["attention_mask"][:n].to(device)
    weights = batch["loss_weights"][:n].to(device)
    first = batch["first_response"]  # logits at position t predict token t+1: keep from first-1 on
    width = input_ids.shape[1]
    if _accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=width - first + 1).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, first - 1:]
    logits = logits[:, :-1].float()  # positions first-1 .. T-2 predict tokens first .. T-1
    targets = input_ids[:, first:]
    per_token = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return sequence_logps(per_token, weights[:, first:])
