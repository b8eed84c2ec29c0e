"""The versioned Arrow schema of prefdata's tables.

Two tables flow through a build:

* a **prompt table** (`PROMPT_SCHEMA`): `id`, `prompt` (chat messages), `reference` (an optional
  reference answer, e.g. GSM8K's "#### N"); generators read it;
* a **pair table** (`pair_schema(...)`): one preference pair per row. The core columns are fixed;
  `metadata` is a struct whose fields each generator declares; filters append their own
  columns after the core ones (trainers ignore columns they do not know).

`prompt`, `chosen` and `rejected` are lists of `{role, content}` structs: TRL's conversational
format with an explicit prompt, readable by `datasets` and TRL as they are.

The schema version is written into the Arrow schema metadata (`prefdata.schema_version`), so a
reader can tell which layout a Parquet file has without guessing from its columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1.0"
SCHEMA_VERSION_KEY = b"prefdata.schema_version"

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)

PROMPT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt", MESSAGES_TYPE, nullable=False),
    pa.field("reference", pa.string()),
)

CORE_PAIR_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", MESSAGES_TYPE, nullable=False),
    pa.field("chosen", MESSAGES_TYPE, nullable=False),
    pa.field("rejected", MESSAGES_TYPE, nullable=False),
    pa.field("chosen_score", pa.float64()),
    pa.field("rejected_score", pa.float64()),
    pa.field("margin", pa.float64()),
    pa.field("source", pa.string(), nullable=False),
)
CORE_PAIR_COLUMNS: tuple[str, ...] = tuple(f.name for f in CORE_PAIR_FIELDS) + ("metadata",)


def _with_version(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


PROMPT_SCHEMA = _with_version(pa.schema(list(PROMPT_FIELDS)))


def pair_schema(metadata_type: pa.StructType) -> pa.Schema:
    """The pair schema with a generator's metadata struct.

    Parquet cannot store a struct without fields, so every generator declares at least one
    metadata field (where the pair came from is always worth recording).
    """
    if not isinstance(metadata_type, pa.StructType) or metadata_type.num_fields == 0:
        raise ValueError("metadata_type must be a struct with at least one field")
    return _with_version(pa.schema([*CORE_PAIR_FIELDS, pa.field("metadata", metadata_type)]))


def schema_version_of(schema: pa.Schema) -> str | None:
    raw = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    return raw.decode() if raw is not None else None


def fingerprint(value: Any) -> str:
    """Stable content hash of a JSON-serialisable value (sorted keys, no whitespace)."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_pair_id(source_id: str, generator: str, parameters: Mapping[str, Any], key: Any = None) -> str:
    """A pair's stable id: hash of the source row id, the generator, its parameters and a key
    that tells apart several pairs of one source row (e.g. the sample indices paired).

    Never derived from prompt text: duplicate prompts are common and must stay distinct rows.
    """
    return fingerprint([source_id, generator, dict(parameters), key])[:20]


def user_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def messages_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The concatenated content of a message list (for comparisons and lengths, not for models)."""
    return "\n".join(m["content"] for m in messages)


def put_column(table: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    """`table` with column `name` replaced in place, or appended when it is new (a stage that runs
    twice, or after another writer of the column, overwrites rather than duplicates it)."""
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, column)
    return table.append_column(name, column)


def empty_pair_table(metadata_type: pa.StructType) -> pa.Table:
    return pair_schema(metadata_type).empty_table()
