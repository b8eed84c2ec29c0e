"""Converters to TRL's preference formats (https://huggingface.co/docs/trl/dataset_formats).

* conversational, explicit prompt: `prompt` = chat messages, `chosen`/`rejected` = assistant
  messages. This is prefdata's own layout, so the conversion only selects columns.
* standard, explicit prompt: strings. With a tokenizer, `prompt` is the chat template applied
  with the generation prompt and each response is the rest of the templated conversation (how
  TRL itself turns conversational rows into text); without one, a single-user-turn prompt and
  single-message responses map to their plain contents.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "data") and hasattr(data.data, "table"):  # datasets.Dataset
        return data.data.table
    raise TypeError(f"expected a pyarrow Table or datasets.Dataset, got {type(data).__name__}")


def to_trl_conversational(data: Any, keep_columns: bool = False):
    """-> datasets.Dataset with conversational prompt/chosen/rejected (extra columns kept if asked)."""
    import datasets

    table = _as_table(data)
    if not keep_columns:
        table = table.select(list(PREFERENCE_COLUMNS))
    return datasets.Dataset(table)


def _plain(messages: list[dict], field: str, row: int) -> str:
    if len(messages) != 1:
        raise ValueError(f"row {row}, field '{field}': {len(messages)} messages; pass a tokenizer to template multi-turn chats")
    return messages[0]["content"]


def to_trl_standard(data: Any, tokenizer: Any | None = None):
    """-> datasets.Dataset with string prompt/chosen/rejected."""
    import datasets

    table = _as_table(data).select(list(PREFERENCE_COLUMNS))
    rows = []
    for i, row in enumerate(table.to_pylist()):
        if tokenizer is None:
            rows.append({k: _plain(row[k], k, i) for k in PREFERENCE_COLUMNS})
            continue
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        out = {"prompt": prompt}
        for side in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(f"row {i}: the chat template renders the prompt differently inside the conversation")
            out[side] = full[len(prompt):]
        rows.append(out)
    return datasets.Dataset.from_list(rows)
