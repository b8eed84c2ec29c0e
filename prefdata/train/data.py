"""Pairs -> token ids -> padded batches, the way TRL's `DPOTrainer` (1.16) does it.

Tokenising (conversational rows): the prompt is the chat template with the generation prompt;
prompt+chosen and prompt+rejected are the whole conversations; the response is everything after
the first token where the tokenised prompt and a conversation diverge, and both sides share the
shorter of the two prompt cuts (TRL's rule; `ChatFormatter.split_response` finds each cut). The
response keeps the template's end-of-turn tokens, so "stop here" is part of its log-probability;
no EOS is added to conversational rows (TRL adds EOS only to plain-text rows, which prefdata
never has: its pair schema is conversational).

Batches: rows [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}, rationale rows...], right
padded, one forward for all of them. `loss_weights` is 0 on prompt and padding tokens, 1 on
response tokens, and RISE's `edit_span_weight` on response tokens inside an edit span.

**Decision:** nothing is truncated. A pair whose prompt+response exceeds `max_length` tokens is
set aside with reason `sequence_too_long` (TRL cuts it, which drops the end-of-turn token and
makes precomputed reference log-probs disagree with the trained sequence).

Columns read when present (all optional except the core ones):

| column | type | used for |
|---|---|---|
| `id`, `prompt`, `chosen`, `rejected` | string, chats | the pair (the prompt must end with a user turn) |
| `ref_chosen_logps`, `ref_rejected_logps` | float64 | summed reference log-probs (the `reference_logps` stage); no reference model needed |
| `ref_logps_model` | string | the model they were computed with; checked against the training reference |
| `margin` (or `margin_column`) | float64 | loss `margin`: the per-pair margin (e.g. the voting filter's strength mean) |
| `rationale` | string | RDPO: why chosen is preferred; its log-prob under the policy given the rationale prompt |
| `rationale_order` | string | `chosen_first` (default, the authors' layout) or `rejected_first`: which response the rationale prompt shows above |
| `metadata.edit_spans` | list<{side, char_start, char_end}> | RISE token weights, see below |

**Edit spans** (written by the RISE generator): `metadata.edit_spans` is a list of structs
`{side: "chosen" | "rejected", char_start: int, char_end: int}`: a half-open range of Python
string indices into the `content` of the LAST message of that side (the edited step). A response
token whose characters overlap a span gets weight `edit_span_weight` in the summed log-prob of
the policy and of the reference. Character spans, not token spans, because a dataset built with one
tokenizer may be trained with another; a span outside the content, or a tokenizer whose
offsets cannot be mapped, rejects the row (`bad_edit_spans`).

**Rationale prompt**: `prefdata.schemas.formats.rationale_prompt` (the RDPO generator writes the
rationale with the same prompt the trainer conditions on).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefdata.engines.chat import ChatFormatter
from prefdata.schemas.errors import Reject, RowError
from prefdata.schemas.formats import (  # the column names and formats a build and the trainer share
    EDIT_SPANS,
    RATIONALE,
    RATIONALE_ORDER,
    REF_CHOSEN,
    REF_REJECTED,
    rationale_prompt,
    tokenize_pair,
)
from prefdata.train.config import TrainError
from prefdata.types import RejectReason

STAGE = "train"


def load_pairs(path: str | Path, limit: int | None = None):
    """A prefdata dataset folder, a Parquet file or a `datasets` save_to_disk folder -> `datasets.Dataset`."""
    import datasets
    import pyarrow.parquet as pq

    from prefdata.schemas.writers import load_dataset_dir, shard_files

    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        ds = datasets.Dataset(pq.read_table(path))
    elif path.is_dir() and shard_files(path):
        ds = load_dataset_dir(path)
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        ds = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        what = "not found" if not path.exists() else "not a prefdata dataset folder, Parquet file or datasets folder"
        raise TrainError(f"{path}: {what}")
    missing = [c for c in ("id", "prompt", "chosen", "rejected") if c not in ds.column_names]
    if missing:
        raise TrainError(f"{path}: not a pair dataset: no column(s) {missing} (build it with `prefdata build`)")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def in_holdout(row_id: str, fraction: float) -> bool:
    """Whether a row is held out: a hash of its id, so the split is the same for train and eval and
    whatever the row order or shard."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"prefdata-holdout:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def edit_span_weights(formatter: ChatFormatter, prompt: Sequence[Mapping[str, str]], response: Sequence[Mapping[str, str]],
                      n_response_tokens: int, spans: Sequence[tuple[int, int]], weight: float) -> list[float]:
    """Per-token weights of a response: `weight` on tokens overlapping a character span of the last
    message's content, 1 elsewhere."""
    tokenizer = formatter.tokenizer
    conversation = [*prompt, *response]
    text = formatter.render(conversation, add_generation_prompt=False)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets
        raise RowError(RejectReason.BAD_EDIT_SPANS, f"metadata.{EDIT_SPANS}", "the tokenizer gives no character offsets") from None
    if list(encoded["input_ids"]) != formatter.conversation_ids(conversation):
        raise RowError(RejectReason.BAD_EDIT_SPANS, f"metadata.{EDIT_SPANS}",
                       "the rendered chat does not re-tokenise to the template's ids; cannot map character spans")
    content = response[-1]["content"]
    start = text.rfind(content)
    if start < 0:
        raise RowError(RejectReason.BAD_EDIT_SPANS, f"metadata.{EDIT_SPANS}", "the chat template changed the response text")
    offsets = list(encoded["offset_mapping"])[len(encoded["input_ids"]) - n_response_tokens:]
    weights = []
    for s, e in offsets:
        inside = e > s and any(s < start + ce and e > start + cs for cs, ce in spans)
        weights.append(weight if inside else 1.0)
    return weights


@dataclass
class PairExample:
    """One tokenised pair (and what the loss needs of its row)."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_weights: list[float] | None = None
    rejected_weights: list[float] | None = None
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    margin: float | None = None
    alpha: float | None = None
    rationale_prompt_ids: list[int] | None = None
    rationale_ids: list[int] | None = None


@dataclass(frozen=True)
class EncodeSpec:
    """What to read from each row besides the pair."""

    max_length: int = 1024
    ref_columns: bool = False  # read ref_*_logps; a row with a null one is rejected
    margin_column: str | None = None  # required non-null per row when set
    alpha_column: str | None = None
    rationale: bool = False  # tokenise `rationale` rows (rows without one carry no rationale term)
    edit_span_weight: float = 1.0


@dataclass
class EncodeResult:
    examples: list[PairExample]
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def _finite(row: Mapping[str, Any], column: str) -> float:
    value = row.get(column)
    if value is None:
        raise RowError(RejectReason.MISSING_FIELD, column, "null")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError(RejectReason.NAN_SCORE, column, f"expected a finite number, got {value!r}")
    return float(value)


def _spans(row: Mapping[str, Any], side: str, content_length: int) -> list[tuple[int, int]]:
    spans = ((row.get("metadata") or {}).get(EDIT_SPANS)) or []
    out = []
    for i, span in enumerate(spans):
        where = f"metadata.{EDIT_SPANS}[{i}]"
        if not isinstance(span, Mapping) or span.get("side") not in ("chosen", "rejected"):
            raise RowError(RejectReason.BAD_EDIT_SPANS, where, "expected {side: chosen|rejected, char_start, char_end}")
        if span["side"] != side:
            continue
        cs, ce = span.get("char_start"), span.get("char_end")
        if not (isinstance(cs, int) and isinstance(ce, int) and 0 <= cs < ce <= content_length):
            raise RowError(RejectReason.BAD_EDIT_SPANS, where, f"span [{cs}, {ce}) does not fit a {side} text of {content_length} characters")
        out.append((cs, ce))
    return out


def encode_row(row: Mapping[str, Any], formatter: ChatFormatter, spec: EncodeSpec) -> PairExample:
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    prompt_ids, chosen_ids, rejected_ids = tokenize_pair(formatter, prompt, chosen, rejected)
    longest = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
    if longest > spec.max_length:
        raise RowError(RejectReason.SEQUENCE_TOO_LONG, "chosen" if len(chosen_ids) >= len(rejected_ids) else "rejected",
                       f"{longest} tokens exceed max_length {spec.max_length}")
    if not chosen_ids or not rejected_ids:
        raise RowError(RejectReason.EMPTY_TEXT, "chosen" if not chosen_ids else "rejected", "no response tokens")
    example = PairExample(id=row["id"], prompt_ids=prompt_ids, chosen_ids=chosen_ids, rejected_ids=rejected_ids)
    if spec.ref_columns:
        example.ref_chosen_logps = _finite(row, REF_CHOSEN)
        example.ref_rejected_logps = _finite(row, REF_REJECTED)
    if spec.margin_column is not None:
        example.margin = _finite(row, spec.margin_column)
    if spec.alpha_column is not None:
        example.alpha = _finite(row, spec.alpha_column)
        if not 0 <= example.alpha <= 1:
            raise RowError(RejectReason.WRONG_TYPE, spec.alpha_column, f"a share of raters must be in [0, 1], got {example.alpha}")
    if spec.edit_span_weight != 1.0:
        for side, response, ids in (("chosen", chosen, chosen_ids), ("rejected", rejected, rejected_ids)):
            spans = _spans(row, side, len(response[-1]["content"]))
            if spans:
                weights = edit_span_weights(formatter, prompt, response, len(ids), spans, spec.edit_span_weight)
                setattr(example, f"{side}_weights", weights)
    if spec.rationale and row.get(RATIONALE):
        rat_prompt = rationale_prompt(prompt, chosen[-1]["content"], rejected[-1]["content"], row.get(RATIONALE_ORDER))
        rat_prompt_ids, rat_ids = formatter.split_response(rat_prompt, [{"role": "assistant", "content": row[RATIONALE]}])
        if len(rat_prompt_ids) + len(rat_ids) > spec.max_length:
            raise RowError(RejectReason.SEQUENCE_TOO_LONG, RATIONALE,
                           f"rationale prompt + rationale: {len(rat_prompt_ids) + len(rat_ids)} tokens exceed max_length {spec.max_length}")
        example.rationale_prompt_ids, example.rationale_ids = rat_prompt_ids, rat_ids
    return example


def encode_pairs(rows: Iterable[Mapping[str, Any]], tokenizer: Any, spec: EncodeSpec, source: str = "") -> EncodeResult:
    """Tokenise rows; a row that cannot be used becomes a `Reject` naming its row, id, field and reason."""
    formatter = ChatFormatter(tokenizer)
    result = EncodeResult(examples=[])
    for index, row in enumerate(rows):
        try:
            result.examples.append(encode_row(row, formatter, spec))
        except RowError as err:
            result.rejects.append(Reject(STAGE, err.reason, err.detail, file=source or None, row=index,
                                         row_id=row.get("id"), field=err.field))
            result.counts[err.reason.value] += 1
    result.counts["pairs"] = len(result.examples)
    result.counts["with_rationale"] = sum(e.rationale_ids is not None for e in result.examples)
    result.counts["with_edit_spans"] = sum(e.chosen_weights is not None or e.rejected_weights is not None
                                           for e in result.examples)
    return result


def collate(examples: Sequence[PairExample], pad_id: int) -> dict[str, Any]:
    """Right-padded batch: rows chosen_0..B-1, rejected_0..B-1, then one row per pair with a rationale.

    Keys: input_ids, attention_mask [N, T] long; loss_weights [N, T] float (0 off the response);
    lengths [N] (response tokens); first_response (the earliest response position in the batch);
    n_pairs; rationale_pairs (indices of the pairs whose rationale rows follow); and, when every
    example has them, ref_chosen_logps, ref_rejected_logps, margin, alpha [B]."""
    import torch

    rows: list[tuple[list[int], list[int], list[float] | None]] = []
    for side in ("chosen", "rejected"):
        for ex in examples:
            rows.append((ex.prompt_ids, getattr(ex, f"{side}_ids"), getattr(ex, f"{side}_weights")))
    rationale_pairs = [i for i, ex in enumerate(examples) if ex.rationale_ids is not None]
    for i in rationale_pairs:
        rows.append((examples[i].rationale_prompt_ids, examples[i].rationale_ids, None))
    width = max(len(p) + len(r) for p, r, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_weights = torch.zeros((len(rows), width), dtype=torch.float32)
    for n, (prompt, response, weights) in enumerate(rows):
        length = len(prompt) + len(response)
        input_ids[n, :length] = torch.tensor(prompt + response)
        attention_mask[n, :length] = 1
        loss_weights[n, len(prompt):length] = torch.tensor(weights if weights is not None else [1.0] * len(response))
    batch: dict[str, Any] = {
        "input_ids": input_ids, "attention_mask": attention_mask, "loss_weights": loss_weights,
        "lengths": torch.tensor([len(r) for _, r, _ in rows], dtype=torch.float32),
        "first_response": max(1, min(len(p) for p, _, _ in rows)),
        "n_pairs": len(examples), "rationale_pairs": torch.tensor(rationale_pairs, dtype=torch.long),
        "ids": [ex.id for ex in examples],
    }
    for key in ("ref_chosen_logps", "ref_rejected_logps", "margin", "alpha"):
        values = [getattr(ex, key) for ex in examples]
        if all(v is not None for v in values):
            batch[key] = torch.tensor(values, dtype=torch.float32)
    return batch
