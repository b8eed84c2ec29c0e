"""The vectorised read of plain pair rows: a Parquet batch whose prompt, chosen and rejected are
string columns becomes a pair table with pyarrow compute, not row by row.

It gives exactly what `readers.pair_record` gives row by row (same ids, chats, scores, metadata),
and it only takes batches it is sure of: any null, empty text, HH-style prompt ("Human: ..."),
chosen equal to rejected, non-finite score, empty or repeated id in a batch sends the whole
batch to the row-by-row path, which makes the rejects. `tests/schemas/test_fast_pairs.py`
checks both paths agree.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring  # what json.dumps(str, ensure_ascii=False) returns
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from prefdata.schemas.pair import MESSAGE_TYPE, pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE, INPUT_SOURCE, ColumnMap
from prefdata.types import SourceKind

_STRING = (pa.string(), pa.large_string())
SCHEMA = pair_schema(INPUT_METADATA_TYPE)
_ID_SUFFIX = json.dumps([INPUT_SOURCE, {"kind": SourceKind.PAIRS.value}, None], separators=(",", ":"))[1:]


def eligible(columns: ColumnMap) -> bool:
    """Column names the vectorised path can read (top-level columns, a prompt column)."""
    names = [columns.prompt, columns.chosen, columns.rejected, columns.id, columns.chosen_score, columns.rejected_score]
    return columns.prompt is not None and all(n is None or "." not in n for n in names)


def pair_id(source_id: str) -> str:
    """`make_pair_id(source_id, "input", {"kind": "pairs"})`, without building the list to hash."""
    payload = "[" + encode_basestring(source_id) + "," + _ID_SUFFIX
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def _text_ok(column: pa.ChunkedArray | pa.Array) -> bool:
    if column.type not in _STRING or column.null_count:
        return False
    return pc.all(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)).as_py() is not False


def _chat(role: str, texts: pa.Array) -> pa.ListArray:
    n = len(texts)
    messages = pa.StructArray.from_arrays([pa.array([role] * n, pa.string()), texts.cast(pa.string())],
                                          fields=list(MESSAGE_TYPE))
    return pa.ListArray.from_arrays(pa.array(range(n + 1), pa.int32()), messages)


def _score(batch: pa.RecordBatch, name: str | None) -> pa.Array | None | bool:
    """The score column as float64 (all null when unmapped or absent), or False: not for this path."""
    if name is None or name not in batch.schema.names:
        return pa.nulls(batch.num_rows, pa.float64())
    column = batch.column(name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return False
    values = column.cast(pa.float64())
    if pc.any(pc.invert(pc.is_finite(values))).as_py():
        return False
    return values


def fast_pairs(batch: pa.RecordBatch, columns: ColumnMap, file: str, stem: str, start: int,
               seen: set[int]) -> pa.Table | None:
    """The batch's pair table (rows `start`..), or None when a row needs the row-by-row path.
    Adds the batch's ids to `seen` (hashes, as the reader's duplicate check keeps them) on success."""
    names = batch.schema.names
    if any(name not in names for name in (columns.prompt, columns.chosen, columns.rejected)):
        return None
    prompt, chosen, rejected = (batch.column(columns.prompt), batch.column(columns.chosen),
                                batch.column(columns.rejected))
    if not (_text_ok(prompt) and _text_ok(chosen) and _text_ok(rejected)):
        return None
    if pc.any(pc.or_(pc.starts_with(prompt, "\n\nHuman:"), pc.starts_with(prompt, "Human:"))).as_py():
        return None  # HH transcripts: parsed row by row
    if pc.any(pc.equal(chosen, rejected)).as_py():
        return None
    n = batch.num_rows
    rows = range(start, start + n)
    if columns.id is not None and columns.id in names:
        ids_col = batch.column(columns.id)
        if ids_col.type in _STRING:
            if pc.any(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids_col)), 0)).as_py():
                return None
        elif not pa.types.is_integer(ids_col.type):
            return None
        raw_ids = ids_col.to_pylist()
        source_ids = [f"{stem}-{i}" if v is None else str(v) for v, i in zip(raw_ids, rows)]
    else:
        source_ids = [f"{stem}-{i}" for i in rows]
    chosen_score, rejected_score = _score(batch, columns.chosen_score), _score(batch, columns.rejected_score)
    if chosen_score is False or rejected_score is False:
        return None
    digests = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") for s in source_ids]
    fresh = set(digests)
    if len(fresh) != n or not fresh.isdisjoint(seen):
        return None
    seen.update(fresh)
    metadata = pa.StructArray.from_arrays(
        [pa.array([Path(file).name] * n, pa.string()), pa.array(rows, pa.int64())], fields=list(INPUT_METADATA_TYPE))
    arrays = [pa.array([pair_id(s) for s in source_ids], pa.string()), pa.array(source_ids, pa.string()),
              _chat("user", prompt), _chat("assistant", chosen), _chat("assistant", rejected),
              chosen_score, rejected_score, pc.subtract(chosen_score, rejected_score),
              pa.array([INPUT_SOURCE] * n, pa.string()), metadata]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
