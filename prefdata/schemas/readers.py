"""Readers: JSONL, Parquet and local `datasets` folders -> prompt or pair tables, with column mapping.

Every row is validated on its own. A row that cannot be used becomes a `Reject` carrying the
file, the row index (0-based; for JSONL the 0-based line number), the field and the reason; it
is never dropped silently. A file that cannot be used at all (missing, not a supported format,
a mapped column absent from every row) raises `InputError` naming the file and field.

JSONL is parsed line by line on purpose: pyarrow's and polars' JSON readers fail (or skip
silently) on the first bad line and cannot say which row was bad.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.schemas.errors import InputError, Reject, RowError
from prefdata.schemas.pair import PROMPT_SCHEMA, assistant_turn, make_pair_id, pair_schema, user_chat
from prefdata.schemas.pairing import make_pairs
from prefdata.types import PairingStrategy, RejectReason, Role, SourceFormat, SourceKind

INPUT_METADATA_TYPE = pa.struct([pa.field("source_file", pa.string()), pa.field("source_row", pa.int64())])
COMPLETIONS_METADATA_TYPE = pa.struct([
    pa.field("source_file", pa.string()), pa.field("source_row", pa.int64()),
    pa.field("n_completions", pa.int32()), pa.field("n_scored", pa.int32()),
    pa.field("chosen_index", pa.int32()), pa.field("rejected_index", pa.int32()),
])
INPUT_SOURCE = "input"
_ROLES = {r.value for r in Role}
# A turn marker at the start of the text or of a line. HH-RLHF separates turns with a blank line, but
# some transcripts have a marker after a single newline: that is a turn boundary too, never text.
_HH_TURN = re.compile(r"(?:^|\n+)(Human|Assistant):")
COMPRESSED_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".lz4": "lz4"}
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class ColumnMap:
    """Which source column feeds each prefdata field. Dotted names reach into nested objects
    (`"answer.text"`), and a digit selects a list element (`"turns.0"`)."""

    id: str | None = "id"
    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    reference: str | None = None
    chosen_score: str | None = None
    rejected_score: str | None = None
    # kind = "completions": a list of completions per row, each with a text and a score (or a rank).
    completions: str = "completions"
    completion_text: str = "text"
    completion_score: str = "score"
    lower_score_is_better: bool = False  # ranks (0 = best): negated, so higher is better in the pair table

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None] | None) -> ColumnMap:
        return cls(**dict(mapping or {}))


@dataclass
class ReadResult:
    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0


_MISSING = object()


def _get(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def detect_format(path: Path, fmt: SourceFormat) -> SourceFormat:
    if fmt != SourceFormat.AUTO:
        return fmt
    if path.is_dir():
        return SourceFormat.PARQUET if any(path.glob("**/*.parquet")) and not (path / "dataset_info.json").exists() \
            else SourceFormat.DATASETS
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]  # data.jsonl.gz: the format is that of data.jsonl
    suffix = suffixes[-1] if suffixes else ""
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return SourceFormat.JSONL
    if suffix == ".parquet":
        return SourceFormat.PARQUET
    raise InputError(str(path), f"cannot tell the format from the suffix {suffix!r}; set format = 'jsonl' | 'parquet' | 'datasets'")


def iter_records(path: str | Path, fmt: SourceFormat = SourceFormat.AUTO) -> Iterator[tuple[int, dict | RowError, Any]]:
    """Yield (row index, record or RowError, raw payload) for every row of a file."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "file not found")
    fmt = detect_format(path, fmt)
    if fmt == SourceFormat.JSONL:
        if path.is_dir():
            raise InputError(str(path), "is a directory, expected a JSONL file")
        yield from _iter_jsonl(path)
    elif fmt == SourceFormat.PARQUET:
        files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
        index = 0
        for file in files:
            try:
                parquet = pq.ParquetFile(file, pre_buffer=False)  # pre-buffering keeps every read range: memory grows with the file
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(str(file), f"not a readable Parquet file ({exc})") from exc
            for batch in parquet.iter_batches(batch_size=2048):
                for record in batch.to_pylist():
                    yield index, record, record
                    index += 1
    else:
        yield from _iter_datasets(path)


def _open_text_bytes(path: Path):
    """A binary line reader: compressed files (.gz, .zst, .bz2, .lz4 by suffix) are decompressed by
    pyarrow's streams."""
    codec = COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if codec is None:
        return path.open("rb")
    import pyarrow as pa

    try:
        return io.BufferedReader(pa.input_stream(str(path), compression=codec))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InputError(str(path), f"cannot open as {codec}-compressed ({exc})") from exc


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | RowError, Any]]:
    with _open_text_bytes(path) as handle:
        try:
            for index, raw in enumerate(handle):
                if index == 0 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]  # UTF-8 with a byte-order mark (Windows editors write one)
                if not raw.strip():
                    continue
                yield _jsonl_row(index, raw)
        except OSError as exc:  # a truncated or corrupt compressed stream
            raise InputError(str(path), f"cannot decompress ({exc})") from exc


def _jsonl_row(index: int, raw: bytes) -> tuple[int, dict | RowError, Any]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        payload = raw.decode("utf-8", errors="backslashreplace")
        return index, RowError(RejectReason.NOT_UTF8, None, f"invalid UTF-8 at byte {exc.start}"), payload
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return index, RowError(RejectReason.INVALID_JSON, None, f"{exc.msg} at column {exc.colno}"), line
    if not isinstance(record, dict):
        return index, RowError(RejectReason.NOT_AN_OBJECT, None, f"expected a JSON object, got {type(record).__name__}"), line
    return index, record, record


def _iter_datasets(path: Path) -> Iterator[tuple[int, dict | RowError, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(path), f"not a dataset saved with `save_to_disk` ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    index = 0
    for batch in loaded.with_format("arrow").iter(batch_size=2048):
        for record in batch.to_pylist():
            yield index, record, record
            index += 1


# --- field validation -------------------------------------------------------------------------


def _text(value: Any, field_name: str) -> str:
    if value is _MISSING or value is None:
        raise RowError(RejectReason.MISSING_FIELD, field_name, "missing")
    if not isinstance(value, str):
        raise RowError(RejectReason.WRONG_TYPE, field_name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(RejectReason.EMPTY_TEXT, field_name, "empty text")
    return value


def validate_messages(value: Any, field_name: str) -> list[dict[str, str]]:
    """A chat: a non-empty list of {role, content} with known roles and non-empty text."""
    if value is _MISSING or value is None:
        raise RowError(RejectReason.MISSING_FIELD, field_name, "missing")
    if not isinstance(value, list):
        raise RowError(RejectReason.WRONG_TYPE, field_name, f"expected a string or a list of messages, got {type(value).__name__}")
    if not value:
        raise RowError(RejectReason.EMPTY_TEXT, field_name, "empty message list")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise RowError(RejectReason.WRONG_TYPE, f"{field_name}[{i}]", "expected an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise RowError(RejectReason.BAD_ROLE, f"{field_name}[{i}].role", f"unknown role {role!r}")
        if not isinstance(content, str):
            raise RowError(RejectReason.WRONG_TYPE, f"{field_name}[{i}].content", f"expected a string, got {type(content).__name__}")
        if not content.strip():
            raise RowError(RejectReason.EMPTY_TEXT, f"{field_name}[{i}].content", "empty text")
        messages.append({"role": role, "content": content})
    return messages


def parse_hh_transcript(text: str, field_name: str = "transcript") -> list[dict[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}] (HH-RLHF's format).

    A marker at the start of any line is a turn boundary: a few HH transcripts have one after a
    single newline, and it starts a new turn rather than becoming part of the previous one. Two
    turns of one role in a row are kept as they are in the source (HH has such transcripts)."""
    text = _text(text, field_name)
    marks = list(_HH_TURN.finditer(text))
    if not marks:
        raise RowError(RejectReason.WRONG_TYPE, field_name, "no 'Human:' or 'Assistant:' turn found")
    if text[: marks[0].start()].strip():
        raise RowError(RejectReason.BAD_ROLE, field_name, "text before the first 'Human:' turn")
    messages = []
    for mark, nxt in zip(marks, [*marks[1:], None]):
        content = text[mark.end() : nxt.start() if nxt else len(text)]
        content = content[1:] if content.startswith(" ") else content
        role = Role.USER.value if mark.group(1) == "Human" else Role.ASSISTANT.value
        messages.append({"role": role, "content": content})
    return messages


def _is_hh(text: str) -> bool:
    return text.startswith("\n\nHuman:") or text.startswith("Human:")


def _chat(value: Any, field_name: str, *, as_role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if as_role == Role.USER.value and _is_hh(value):
            messages = parse_hh_transcript(value, field_name)
            # HH-style prompts end with an empty "Assistant:" cue for the model; it is not a turn.
            if len(messages) > 1 and messages[-1]["role"] == Role.ASSISTANT.value and not messages[-1]["content"].strip():
                messages = messages[:-1]
            return messages
        text = _text(value, field_name)
        return user_chat(text) if as_role == Role.USER.value else assistant_turn(text)
    return validate_messages(value, field_name)


def _source_id(record: Mapping[str, Any], columns: ColumnMap, stem: str, index: int) -> str:
    if columns.id is None:
        return f"{stem}-{index}"
    value = _get(record, columns.id)
    if value is _MISSING or value is None:
        return f"{stem}-{index}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(RejectReason.WRONG_TYPE, columns.id, f"expected a string or integer id, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RowError(RejectReason.EMPTY_TEXT, columns.id, "empty id")
    return str(value)


def _score(record: Mapping[str, Any], column: str | None) -> float | None:
    if column is None:
        return None
    value = _get(record, column)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(RejectReason.WRONG_TYPE, column, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise RowError(RejectReason.NAN_SCORE, column, f"score is {value}")
    return float(value)


def prompt_record(record: Mapping[str, Any], columns: ColumnMap, stem: str, index: int) -> dict[str, Any]:
    """Validate one source row into a prompt-table record."""
    if columns.prompt is None:
        raise RowError(RejectReason.MISSING_FIELD, "prompt", "no prompt column mapped")
    prompt = _chat(_get(record, columns.prompt), columns.prompt, as_role=Role.USER.value)
    if prompt[-1]["role"] != Role.USER.value:
        raise RowError(RejectReason.BAD_ROLE, columns.prompt, "a prompt must end with a user turn")
    reference = None
    if columns.reference is not None:
        value = _get(record, columns.reference)
        if value is _MISSING or value is None:
            raise RowError(RejectReason.MISSING_FIELD, columns.reference, "missing reference")
        if isinstance(value, (dict, list)):
            raise RowError(RejectReason.WRONG_TYPE, columns.reference, "expected a scalar reference answer")
        reference = str(value)
    return {"id": _source_id(record, columns, stem, index), "prompt": prompt, "reference": reference}


def _split_conversation(chosen: list[dict], rejected: list[dict], field_name: str) -> tuple[list, list, list]:
    """Common message prefix -> prompt; the rest must be assistant turns (TRL's implicit prompt)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        if chosen[0]["role"] == Role.USER.value and rejected[0]["role"] == Role.USER.value:
            raise RowError(RejectReason.TRANSCRIPTS_DIVERGE_EARLY, field_name, "chosen and rejected differ in their first user turn")
        raise RowError(RejectReason.MISSING_FIELD, "prompt", "no prompt column and no shared conversation prefix")
    # The shared prefix may run into the final assistant turn's opening; back up to a user turn.
    while n > 0 and chosen[n - 1]["role"] != Role.USER.value:
        n -= 1
    prompt, chosen_tail, rejected_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt:
        raise RowError(RejectReason.NO_ASSISTANT_TURN, field_name, "no user turn before the responses")
    for tail, name in ((chosen_tail, "chosen"), (rejected_tail, "rejected")):
        if not tail:
            raise RowError(RejectReason.NO_ASSISTANT_TURN, name, "no assistant turn after the prompt")
        if any(m["role"] != Role.ASSISTANT.value for m in tail):
            raise RowError(RejectReason.TRANSCRIPTS_DIVERGE_EARLY, name, "chosen and rejected differ before their final assistant turn")
    return prompt, chosen_tail, rejected_tail


def pair_record(record: Mapping[str, Any], columns: ColumnMap, kind: SourceKind, file: str, stem: str, index: int) -> dict[str, Any]:
    """Validate one source row into a pair-table record (source = 'input')."""
    source_id = _source_id(record, columns, stem, index)
    if kind == SourceKind.HH:
        chosen_full = parse_hh_transcript(_get(record, columns.chosen), columns.chosen)
        rejected_full = parse_hh_transcript(_get(record, columns.rejected), columns.rejected)
        if chosen_full[-1]["role"] != Role.ASSISTANT.value or rejected_full[-1]["role"] != Role.ASSISTANT.value:
            name = columns.chosen if chosen_full[-1]["role"] != Role.ASSISTANT.value else columns.rejected
            raise RowError(RejectReason.NO_ASSISTANT_TURN, name, "transcript does not end with an Assistant turn")
        for messages, name in ((chosen_full, columns.chosen), (rejected_full, columns.rejected)):
            if not messages[-1]["content"].strip():
                raise RowError(RejectReason.EMPTY_TEXT, name, "final Assistant turn is empty")
        prompt, chosen, rejected = _split_conversation(chosen_full, rejected_full, columns.chosen)
    else:
        prompt_value = _get(record, columns.prompt) if columns.prompt else _MISSING
        if prompt_value is _MISSING or prompt_value is None:
            chosen_full = _chat(_get(record, columns.chosen), columns.chosen, as_role=Role.ASSISTANT.value)
            rejected_full = _chat(_get(record, columns.rejected), columns.rejected, as_role=Role.ASSISTANT.value)
            prompt, chosen, rejected = _split_conversation(chosen_full, rejected_full, columns.chosen)
        else:
            prompt = _chat(prompt_value, columns.prompt, as_role=Role.USER.value)
            if prompt[-1]["role"] != Role.USER.value:
                raise RowError(RejectReason.BAD_ROLE, columns.prompt, "a prompt must end with a user turn")
            chosen = _chat(_get(record, columns.chosen), columns.chosen, as_role=Role.ASSISTANT.value)
            rejected = _chat(_get(record, columns.rejected), columns.rejected, as_role=Role.ASSISTANT.value)
        for messages, name in ((chosen, columns.chosen), (rejected, columns.rejected)):
            if any(m["role"] != Role.ASSISTANT.value for m in messages):
                raise RowError(RejectReason.BAD_ROLE, name, "responses must be assistant turns")
    if chosen == rejected:
        raise RowError(RejectReason.CHOSEN_EQUALS_REJECTED, columns.rejected, "chosen and rejected are identical")
    chosen_score = _score(record, columns.chosen_score)
    rejected_score = _score(record, columns.rejected_score)
    margin = chosen_score - rejected_score if chosen_score is not None and rejected_score is not None else None
    return {
        "id": make_pair_id(source_id, INPUT_SOURCE, {"kind": kind.value}),
        "prompt_id": source_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
        "margin": margin,
        "source": INPUT_SOURCE,
        "metadata": {"source_file": Path(file).name, "source_row": index},
    }


def completions_record(record: Mapping[str, Any], columns: ColumnMap, file: str, stem: str, index: int) -> dict[str, Any]:
    """One row with a prompt and a list of scored completions -> the best-vs-worst pair.

    A completion with a null score or an empty text takes no part (counted in `n_scored`);
    ties, duplicate texts and fewer than two scored completions follow `pairing.make_pairs`'
    rules, and a row left without a pair is rejected (`no_pair`).
    """
    source_id = _source_id(record, columns, stem, index)
    if columns.prompt is None:
        raise RowError(RejectReason.MISSING_FIELD, "prompt", "no prompt column mapped")
    prompt = _chat(_get(record, columns.prompt), columns.prompt, as_role=Role.USER.value)
    if prompt[-1]["role"] != Role.USER.value:
        raise RowError(RejectReason.BAD_ROLE, columns.prompt, "a prompt must end with a user turn")
    items = _get(record, columns.completions)
    if items is _MISSING or items is None:
        raise RowError(RejectReason.MISSING_FIELD, columns.completions, "missing")
    if not isinstance(items, list):
        raise RowError(RejectReason.WRONG_TYPE, columns.completions, f"expected a list, got {type(items).__name__}")
    texts, scores = [], []
    for j, item in enumerate(items):
        where = f"{columns.completions}[{j}]"
        if not isinstance(item, Mapping):
            raise RowError(RejectReason.WRONG_TYPE, where, f"expected an object, got {type(item).__name__}")
        text = _get(item, columns.completion_text)
        if text is not _MISSING and text is not None and not isinstance(text, str):
            raise RowError(RejectReason.WRONG_TYPE, f"{where}.{columns.completion_text}", "expected a string")
        score = _score(item, columns.completion_score) if isinstance(text, str) and text.strip() else None
        if score is not None and columns.lower_score_is_better:
            score = 0.0 - score  # not -score: a rank of 0 must not read as -0.0
        texts.append(text if isinstance(text, str) else "")
        scores.append(score)
    result = make_pairs(scores, texts, PairingStrategy.MAX_MIN, random.Random(0))  # max_min draws nothing
    if not result.pairs:
        detail = "all scored completions tied" if result.counts["no_pair_all_tied"] else "fewer than two scored, distinct completions"
        raise RowError(RejectReason.NO_PAIR, columns.completions, detail)
    best, worst = result.pairs[0].chosen, result.pairs[0].rejected
    return {
        "id": make_pair_id(source_id, INPUT_SOURCE, {"kind": SourceKind.COMPLETIONS.value}),
        "prompt_id": source_id,
        "prompt": prompt,
        "chosen": assistant_turn(texts[best]),
        "rejected": assistant_turn(texts[worst]),
        "chosen_score": scores[best],
        "rejected_score": scores[worst],
        "margin": scores[best] - scores[worst],
        "source": INPUT_SOURCE,
        "metadata": {"source_file": Path(file).name, "source_row": index, "n_completions": len(items),
                     "n_scored": sum(s is not None for s in scores), "chosen_index": best, "rejected_index": worst},
    }


def _row_id(raw: Any, columns: ColumnMap) -> str | None:
    """The source id of a raw row, when it has a usable one (for rejects)."""
    if columns.id is None or not isinstance(raw, Mapping):
        return None
    value = _get(raw, columns.id)
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _read(path: str | Path, fmt: SourceFormat, limit: int | None, stage: str, make, schema: pa.Schema,
          columns: ColumnMap) -> ReadResult:
    path, fmt = Path(path), SourceFormat(fmt)
    file, stem = str(path), path.stem
    records, rejects, seen = [], [], set()
    rows_read = 0
    for index, item, raw in iter_records(path, fmt):
        if limit is not None and len(records) >= limit:
            break
        rows_read += 1
        try:
            if isinstance(item, RowError):
                raise item
            record = make(item, file, stem, index)
            key = record.get("prompt_id", record["id"])
            if key in seen:
                raise RowError(RejectReason.DUPLICATE_ID, columns.id or "id", f"id {key!r} already used by an earlier row")
            seen.add(key)
            records.append(record)
        except RowError as err:
            rejects.append(Reject(stage=stage, reason=err.reason, detail=err.detail, file=file, row=index,
                                  row_id=_row_id(raw, columns), field=err.field, payload=raw))
    if not records and rejects:
        missing = {r.field for r in rejects if r.reason == RejectReason.MISSING_FIELD}
        if len(missing) == 1 and all(r.reason == RejectReason.MISSING_FIELD for r in rejects):
            name = missing.pop()
            raise InputError(file, f"no row has the column (map it under [source.columns]); first row: {rejects[0].payload!r:.200}",
                             field=name)
    return ReadResult(table=pa.Table.from_pylist(records, schema=schema), rejects=rejects, rows_read=rows_read)


def read_prompts(path: str | Path, columns: ColumnMap | None = None, fmt: SourceFormat = SourceFormat.AUTO,
                 limit: int | None = None) -> ReadResult:
    """Read a prompt file into a PROMPT_SCHEMA table (rows without an id get '<file stem>-<row>')."""
    columns = columns or ColumnMap()
    return _read(path, fmt, limit, "read", lambda rec, file, stem, i: prompt_record(rec, columns, stem, i),
                 PROMPT_SCHEMA, columns)


def read_pairs(path: str | Path, columns: ColumnMap | None = None, fmt: SourceFormat = SourceFormat.AUTO,
               kind: SourceKind = SourceKind.PAIRS, limit: int | None = None) -> ReadResult:
    """Read existing preference pairs (plain, TRL implicit-prompt, HH transcripts, or the best and worst
    of a row's scored completions) into a pair table."""
    columns, kind = columns or ColumnMap(), SourceKind(kind)
    if kind == SourceKind.COMPLETIONS:
        return _read(path, fmt, limit, "read", lambda rec, file, stem, i: completions_record(rec, columns, file, stem, i),
                     pair_schema(COMPLETIONS_METADATA_TYPE), columns)
    return _read(path, fmt, limit, "read",
                 lambda rec, file, stem, i: pair_record(rec, columns, kind, file, stem, i),
                 pair_schema(INPUT_METADATA_TYPE), columns)
