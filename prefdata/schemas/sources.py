"""Sources: a local file or a Hub dataset, with an optional preset, read chunk by chunk; and the
mix of several sources (`[[sources]]`).

One source is read as a stream of chunks (`iter_chunks`): rows are validated as they come
(`readers.prompt_record` / `pair_record` / `completions_record`, the same rules and rejects as
`read_pairs`), and at most `chunk_rows` validated rows are held at once, so a source larger
than memory can be processed shard by shard. `limit` stops reading as soon as that many usable
rows are out.

Mixing (`read_mix`): each source is read (up to its own `limit`) and its ids are namespaced with
the source's name (`prompt_id = "<name>/<row id>"`, the pair id is re-derived from it), so ids are
stable and unique across sources; a `source_name` column says where each row came from. With
weights, the output holds the sources in the proportions of their weights: the total is the
largest the scarcest source allows (`total = min_i n_i / p_i`, `p_i = w_i / sum w`), and source
i contributes `round(total * p_i)` rows: those whose hash of (seed, source name, row id) is
smallest, a seeded sample that does not depend on row order or chunking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from prefdata.schemas.errors import InputError, Reject, RowError
from prefdata.schemas.pair import PROMPT_SCHEMA, make_pair_id, pair_schema
from prefdata.schemas.presets import get_preset
from prefdata.schemas.readers import (
    COMPLETIONS_METADATA_TYPE,
    INPUT_METADATA_TYPE,
    INPUT_SOURCE,
    ColumnMap,
    ReadResult,
    _row_id,
    completions_record,
    iter_records,
    pair_record,
    prompt_record,
)
from prefdata.types import RejectReason, SourceFormat, SourceKind

SOURCE_NAME = "source_name"  # column a mix adds: the name of the source a row came from
READ_STAGE = "read"


@dataclass(frozen=True)
class SourceSpec:
    """One source, as the recipe's `[source]` / `[[sources]]` table gives it (see recipe.SourceConfig)."""

    kind: SourceKind
    columns: ColumnMap
    path: Path | None = None
    format: SourceFormat = SourceFormat.AUTO
    hub: str | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    streaming: bool | None = None
    preset: str | None = None
    limit: int | None = None
    name: str = "input"
    weight: float | None = None


@dataclass
class SourceRead(ReadResult):
    """A `ReadResult` plus what stats.json and the card record about the source(s)."""

    info: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)  # per source of a mix
    rows_ok: int | None = None  # a streamed source: usable rows (its `table` is then empty)


@dataclass
class _Opened:
    label: str
    stem: str
    rows: Iterator[tuple[int, Any, Any]]
    info: dict[str, Any]


def open_rows(spec: SourceSpec) -> _Opened:
    """The source's raw rows (index, record or RowError, payload), reshaped by its preset."""
    preset = get_preset(spec.preset) if spec.preset else None
    if spec.hub is not None:
        from prefdata.schemas.hub_source import open_hub

        split = spec.split or (preset.split if preset else "train")
        config = spec.config if spec.config is not None else (preset.config if preset else None)
        hub = open_hub(spec.hub, config=config, split=split, revision=spec.revision, streaming=spec.streaming)
        opened = _Opened(hub.label, hub.stem, hub.rows, dict(hub.info))
    elif spec.path is not None:
        path = Path(spec.path)
        opened = _Opened(str(path), path.stem, iter_records(path, spec.format), {"path": str(path)})
    else:
        raise InputError("<source>", "a source needs `path` or `hub`")
    if preset is not None:
        opened.info.update(preset=preset.name, dataset=preset.dataset, license=preset.license, citation=preset.citation)
        if preset.reshape is not None:
            opened.rows = preset.reshape(opened.rows)
    return opened


def _maker(kind: SourceKind, columns: ColumnMap):
    if kind == SourceKind.PROMPTS:
        return PROMPT_SCHEMA, lambda rec, file, stem, i: prompt_record(rec, columns, stem, i)
    if kind == SourceKind.COMPLETIONS:
        return pair_schema(COMPLETIONS_METADATA_TYPE), lambda rec, file, stem, i: completions_record(rec, columns, file, stem, i)
    return pair_schema(INPUT_METADATA_TYPE), lambda rec, file, stem, i: pair_record(rec, columns, kind, file, stem, i)


def namespaced(record: dict[str, Any], name: str, kind: SourceKind) -> dict[str, Any]:
    """A record's ids under its source's name: unique across the sources of a mix, and stable."""
    if kind == SourceKind.PROMPTS:
        return {**record, "id": f"{name}/{record['id']}"}
    prompt_id = f"{name}/{record['prompt_id']}"
    return {**record, "prompt_id": prompt_id, "id": make_pair_id(prompt_id, INPUT_SOURCE, {"kind": kind.value})}


@dataclass
class ChunkReader:
    """Reads one source as chunks of at most `chunk_rows` validated rows (`iter(reader)`).

    Counters (`rows_read`, `rows_ok`, `rejects`) grow as chunks are consumed; `info` is known once
    the source is opened (a Hub source's resolved commit). Duplicate ids are detected across the
    whole source with a set of 64-bit hashes (8 bytes of blake2b per row, not the ids themselves).
    """

    spec: SourceSpec
    chunk_rows: int = 2048
    namespace: bool = False
    rows_read: int = 0
    rows_ok: int = 0
    rejects: list[Reject] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._opened = open_rows(self.spec)
        self.info = dict(self._opened.info)
        self.schema, self._make = _maker(self.spec.kind, self.spec.columns)
        self.label = self._opened.label

    def __iter__(self) -> Iterator[pa.Table]:
        """Tables of exactly `chunk_rows` rows (the last one shorter): the cut `iter_shards` makes."""
        buffer: list[pa.Table] = []
        held = 0
        for table in self._tables():
            buffer.append(table)
            held += table.num_rows
            while held >= self.chunk_rows:
                whole = pa.concat_tables(buffer)
                yield whole.slice(0, self.chunk_rows)
                rest = whole.slice(self.chunk_rows)
                buffer, held = ([rest] if rest.num_rows else []), rest.num_rows
        if held:
            yield pa.concat_tables(buffer)
        self._check_some_rows()

    def _full(self) -> bool:
        return self.spec.limit is not None and self.rows_ok >= self.spec.limit

    def _tables(self) -> Iterator[pa.Table]:
        """Validated rows as tables of any size, in input order."""
        seen: set[int] = set()
        batches = self._parquet_batches()
        if batches is None:
            yield from self._row_by_row(self._opened.rows, seen)
            return
        from prefdata.schemas.fast_pairs import fast_pairs

        start = 0
        for _file, batch in batches:
            if self._full():
                return
            table = fast_pairs(batch, self.spec.columns, self._opened.label, self._opened.stem, start, seen)
            if table is not None:
                if self.spec.limit is not None:
                    table = table.slice(0, self.spec.limit - self.rows_ok)
                self.rows_read += table.num_rows
                self.rows_ok += table.num_rows
                yield table
            else:
                rows = ((start + i, record, record) for i, record in enumerate(batch.to_pylist()))
                yield from self._row_by_row(rows, seen)
            start += batch.num_rows

    def _parquet_batches(self) -> Iterator[tuple[Path, pa.RecordBatch]] | None:
        """Arrow batches of a local Parquet pairs source (the vectorised path), else None."""
        from prefdata.schemas.fast_pairs import eligible
        from prefdata.schemas.readers import detect_format

        spec = self.spec
        if spec.path is None or spec.preset is not None or spec.kind != SourceKind.PAIRS or self.namespace \
                or not eligible(spec.columns) or not Path(spec.path).exists():
            return None
        path = Path(spec.path)
        if detect_format(path, spec.format) != SourceFormat.PARQUET:
            return None
        import pyarrow.parquet as pq

        files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]

        def batches() -> Iterator[tuple[Path, pa.RecordBatch]]:
            for file in files:
                try:
                    parquet = pq.ParquetFile(file, pre_buffer=False)  # pre-buffering keeps every read range: memory grows with the file
                except (pa.ArrowInvalid, OSError) as exc:
                    raise InputError(str(file), f"not a readable Parquet file ({exc})") from exc
                for batch in parquet.iter_batches(batch_size=min(self.chunk_rows, 8192)):
                    yield file, batch

        return batches()

    def _row_by_row(self, rows, seen: set[int]) -> Iterator[pa.Table]:
        spec, opened, columns = self.spec, self._opened, self.spec.columns
        records: list[dict[str, Any]] = []
        for index, item, raw in rows:
            if self._full():
                break
            self.rows_read += 1
            try:
                if isinstance(item, RowError):
                    raise item
                record = self._make(item, opened.label, opened.stem, index)
                key = record.get("prompt_id", record["id"])
                digest = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "big")
                if digest in seen:
                    raise RowError(RejectReason.DUPLICATE_ID, columns.id or "id", f"id {key!r} already used by an earlier row")
                seen.add(digest)
                if self.namespace:
                    record = namespaced(record, spec.name, spec.kind)
                records.append(record)
                self.rows_ok += 1
            except RowError as err:
                self.rejects.append(Reject(stage=READ_STAGE, reason=err.reason, detail=err.detail, file=opened.label,
                                           row=index, row_id=_row_id(raw, columns), field=err.field, payload=raw))
            if len(records) >= self.chunk_rows:
                yield pa.Table.from_pylist(records, schema=self.schema)
                records = []
        if records:
            yield pa.Table.from_pylist(records, schema=self.schema)

    def _check_some_rows(self) -> None:
        """A mapped column that no row has is a mapping mistake, not bad rows: fail naming it."""
        if self.rows_ok or not self.rejects:
            return
        missing = {r.field for r in self.rejects if r.reason == RejectReason.MISSING_FIELD}
        if len(missing) == 1 and all(r.reason == RejectReason.MISSING_FIELD for r in self.rejects):
            raise InputError(self.label, "no row has the column (map it under [source.columns]); "
                             f"first row: {self.rejects[0].payload!r:.200}", field=missing.pop())

    def summary(self) -> dict[str, Any]:
        drops: dict[str, int] = {}
        for reject in self.rejects:
            drops[reject.reason.value] = drops.get(reject.reason.value, 0) + 1
        return {"name": self.spec.name, "kind": self.spec.kind.value, "rows_read": self.rows_read,
                "rows_ok": self.rows_ok, "drops": dict(sorted(drops.items())), **self.info}


def read_one(spec: SourceSpec) -> SourceRead:
    """Read a whole source into one table."""
    reader = ChunkReader(spec)
    chunks = list(reader)
    table = pa.concat_tables(chunks) if chunks else reader.schema.empty_table()
    return SourceRead(table=table, rejects=reader.rejects, rows_read=reader.rows_read, info=reader.info)


def _as_completions_metadata(table: pa.Table) -> pa.Table:
    """Pairs and completions sources in one mix: metadata widened to the completions struct (nulls)."""
    if table.schema.field("metadata").type == COMPLETIONS_METADATA_TYPE:
        return table
    meta = table.column("metadata").combine_chunks()
    arrays = [meta.field(f.name) if meta.type.get_field_index(f.name) >= 0 else pa.nulls(len(meta), f.type)
              for f in COMPLETIONS_METADATA_TYPE]
    widened = pa.StructArray.from_arrays(arrays, fields=list(COMPLETIONS_METADATA_TYPE), mask=meta.is_null())
    index = table.schema.get_field_index("metadata")
    return table.set_column(index, pa.field("metadata", COMPLETIONS_METADATA_TYPE), widened)


def _rank(seed: int, name: str, row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{name}\0{row_id}".encode(), digest_size=8).digest(), "big")


def mix_counts(available: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Rows to take from each source so that the shares follow the weights (see the module doc)."""
    total_weight = sum(weights)
    shares = [w / total_weight for w in weights]
    total = min(n / p for n, p in zip(available, shares))
    return [min(n, round(total * p)) for n, p in zip(available, shares)]


def read_mix(specs: Sequence[SourceSpec], seed: int) -> SourceRead:
    """Read several sources into one table with a `source_name` column (see the module doc)."""
    kinds = {spec.kind == SourceKind.PROMPTS for spec in specs}
    if len(kinds) > 1:
        raise InputError("[[sources]]", "a mix holds prompt sources or pair sources, not both")
    tables, rejects, summaries, rows_read = [], [], [], 0
    for spec in specs:
        reader = ChunkReader(spec, namespace=True)
        chunks = list(reader)
        table = pa.concat_tables(chunks) if chunks else reader.schema.empty_table()
        rejects += reader.rejects
        rows_read += reader.rows_read
        tables.append(table)
        summaries.append(reader.summary())
    weights = [spec.weight for spec in specs]
    if all(w is not None for w in weights):
        counts = mix_counts([t.num_rows for t in tables], weights)
        for i, (spec, table, count) in enumerate(zip(specs, tables, counts)):
            ids = table.column("id").to_pylist()
            keep = sorted(sorted(range(len(ids)), key=lambda j: _rank(seed, spec.name, ids[j]))[:count])
            tables[i] = table.take(pa.array(keep, pa.int64()))
    for spec, table, summary in zip(specs, tables, summaries):
        summary["selected"] = table.num_rows
        if spec.weight is not None:
            summary["weight"] = spec.weight
    if not kinds.pop():  # pair tables: one metadata type for all
        if len({t.schema.field("metadata").type for t in tables}) > 1:
            tables = [_as_completions_metadata(t) for t in tables]
    tables = [t.append_column(pa.field(SOURCE_NAME, pa.string()), pa.array([spec.name] * t.num_rows, pa.string()))
              for spec, t in zip(specs, tables)]
    return SourceRead(table=pa.concat_tables(tables), rejects=rejects, rows_read=rows_read,
                      info={"mix": [s.name for s in specs]}, sources=summaries)


LOCAL_STREAM_ABOVE_BYTES = 1024**3  # local inputs larger than this are read shard by shard by default


def local_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def row_upper_bound(spec: SourceSpec, opened_info: dict[str, Any]) -> int | None:
    """Rows the source can yield at most (before validation), without reading it: Parquet metadata,
    a line count for JSON lines, the Hub split's size when its card gives it; None when unknown."""
    bound: int | None = opened_info.get("num_rows")
    if spec.path is not None:
        import pyarrow.parquet as pq

        path = Path(spec.path)
        files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
        if all(f.suffix.lower() == ".parquet" for f in files) and files:
            bound = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        elif path.is_file() and path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
            bound, last = 0, b"\n"
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    bound, last = bound + block.count(b"\n"), block[-1:]
            bound += last != b"\n"  # a last line without a newline
    if spec.limit is not None:  # at most `limit` usable rows come out
        bound = spec.limit if bound is None else min(bound, spec.limit)
    return bound


@dataclass
class StreamedSource:
    """One source read shard by shard while the build runs: `shards` yields tables of `shard_size`
    validated rows (the same shards `iter_shards` cuts from the whole table), and `result()` gives the
    counts and rejects once they are consumed. `input_rows` bounds the rows from above (unknown: the
    rows of the first two shards; it is more than one shard either way, so a stage that needs the
    whole input in one shard refuses, as it would on the whole table)."""

    reader: ChunkReader
    shards: Iterator[pa.Table]
    input_rows: int

    @property
    def column_names(self) -> list[str]:
        return self.reader.schema.names

    def result(self) -> SourceRead:
        return SourceRead(table=self.reader.schema.empty_table(), rejects=self.reader.rejects,
                          rows_read=self.reader.rows_read, info=self.reader.info, rows_ok=self.reader.rows_ok)


def open_streamed(spec: SourceSpec, shard_size: int) -> StreamedSource | SourceRead:
    """Open a source for a build: streamed when it asks to be (`streaming`), when a Hub source
    streams, or when a local input is over `LOCAL_STREAM_ABOVE_BYTES`; otherwise (and when the first
    shard is also the last) read whole, as a `SourceRead`."""
    from itertools import chain

    reader = ChunkReader(spec, chunk_rows=shard_size)
    stream = spec.streaming if spec.streaming is not None else bool(reader.info.get("streaming")) or (
        spec.path is not None and local_bytes(spec.path) > LOCAL_STREAM_ABOVE_BYTES)
    chunks = iter(reader)
    first = next(chunks, None)
    second = next(chunks, None) if first is not None else None
    if not stream or second is None:
        tables = [t for t in (first, second) if t is not None] + list(chunks)
        table = pa.concat_tables(tables) if tables else reader.schema.empty_table()
        return SourceRead(table=table, rejects=reader.rejects, rows_read=reader.rows_read, info=reader.info)
    bound = row_upper_bound(spec, reader.info)
    return StreamedSource(reader, chain([first, second], chunks), max(bound or 0, reader.rows_ok))
