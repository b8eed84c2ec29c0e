"""Errors that name where the problem is, and rejects that keep unusable rows with a reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import pyarrow as pa

from prefdata.types import RejectReason


class PrefdataError(Exception):
    """Base class of the errors prefdata raises on purpose (the CLI prints them in one line)."""


class InputError(PrefdataError):
    """Input that cannot be read at all: the message names the file and, when known, row and field."""

    def __init__(self, file: str, message: str, *, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field, self.detail = str(file), row, field, message
        where = self.file
        if row is not None:
            where += f": row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class RowError(Exception):
    """One row that cannot be used; becomes a `Reject` (or an `InputError` in strict mode)."""

    def __init__(self, reason: RejectReason, field: str | None, detail: str):
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"{reason.value}: field '{field}': {detail}" if field else f"{reason.value}: {detail}")


REJECT_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("row_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("field", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("payload", pa.string()),  # the row as JSON (or the raw line), so nothing is lost
    ]
)


@dataclass(frozen=True)
class Reject:
    stage: str
    reason: RejectReason
    detail: str
    file: str | None = None
    row: int | None = None
    row_id: str | None = None
    field: str | None = None
    payload: Any = dataclass_field(default=None, compare=False)

    def as_record(self) -> dict[str, Any]:
        payload = self.payload
        if payload is not None and not isinstance(payload, str):
            payload = json.dumps(payload, ensure_ascii=False, default=str)
        return {
            "stage": self.stage,
            "file": self.file,
            "row": self.row,
            "row_id": self.row_id,
            "reason": self.reason.value,
            "field": self.field,
            "detail": self.detail,
            "payload": payload,
        }

    def to_error(self) -> InputError:
        return InputError(self.file or self.stage, f"{self.reason.value}: {self.detail}", row=self.row, field=self.field)


def row_payloads(table: pa.Table, rows: Sequence[int], batch: int = 4096) -> list[str]:
    """Rows of `table` as JSON strings (a reject's payload: the row as it was), taken a batch at a
    time: a dropped row costs its JSON text, not a Python dict of its values."""
    out: list[str] = []
    for start in range(0, len(rows), batch):
        records = table.take(pa.array(rows[start : start + batch], type=pa.int64())).to_pylist()
        out.extend(json.dumps(record, ensure_ascii=False, default=str) for record in records)
    return out


def rejects_table(rejects: list[Reject]) -> pa.Table:
    return pa.Table.from_pylist([r.as_record() for r in rejects], schema=REJECT_SCHEMA)


def rejects_from_table(table: pa.Table) -> list[Reject]:
    """The inverse of `rejects_table` (payloads stay JSON text)."""
    return [Reject(stage=r["stage"], reason=RejectReason(r["reason"]), detail=r["detail"], file=r["file"], row=r["row"],
                   row_id=r["row_id"], field=r["field"], payload=r["payload"]) for r in table.to_pylist()]
