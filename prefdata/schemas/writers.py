"""Writers: Parquet shards written atomically with fixed settings, rejects, and `datasets` loading.

Output layout of a build directory (readable by `datasets.load_dataset("parquet", ...)`, by
`prefdata.load` and by the Hub's viewer as-is)::

    DIR/data/train-00000.parquet ...   the pairs, one file per input shard, rows sorted by id
    DIR/rejects.parquet                 rows set aside, with stage, file, row, field and reason
    DIR/stats.json, DIR/recipe.json     what ran and what it counted

Writes go to a temporary name in the same folder, are fsynced and then renamed, so a reader
(or a resumed build) never sees half a file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.faults import fault_point
from prefdata.schemas.errors import PrefdataError

# Fixed writer settings: the same table always gives the same bytes (with the same pyarrow).
PARQUET_SETTINGS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "row_group_size": 8192,
}
DATA_DIR = "data"
SHARD_PATTERN = "train-{index:05d}.parquet"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
TEMP_MARKER = ".tmp-"  # temporary names: .<name>.tmp-<pid>; a resumed build deletes leftovers


class OutputError(PrefdataError):
    """The output cannot be written (disk full, file size limit): names the file, keeps earlier output."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")


def _write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            fault_point("parquet_write" if path.suffix == ".parquet" else "file_write")
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _NO_SPACE or "No space left" in str(exc) or "File too large" in str(exc):
            raise OutputError(f"{path}: cannot write, no space left on the device or file size limit "
                              f"({exc.strerror or exc}); earlier output is kept") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write `data` to `path` via temp file + fsync + rename."""
    _write_atomic(path, lambda handle: handle.write(data))


def _list_items_named(type_: pa.DataType, name: str) -> pa.DataType:
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        value = type_.value_field
        field = pa.field(name, _list_items_named(value.type, name), value.nullable, value.metadata)
        return pa.list_(field) if pa.types.is_list(type_) else pa.large_list(field)
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(_list_items_named(f.type, name)) for f in type_])
    return type_


def name_list_items(table: pa.Table, name: str) -> pa.Table:
    schema = pa.schema([f.with_type(_list_items_named(f.type, name)) for f in table.schema], metadata=table.schema.metadata)
    return table if schema.equals(table.schema, check_metadata=True) else table.cast(schema)


def canonical_table(table: pa.Table) -> pa.Table:
    """One layout for the same rows: a table built in memory names list items `item`, one read
    from Parquet names them `element`; both are written as `element` (the Parquet spec's name),
    in one chunk, so a resumed build's files are byte-identical to an uninterrupted one's."""
    return name_list_items(table, "element").combine_chunks()


def read_as_built(path: str | Path) -> pa.Table:
    """A Parquet file as the table that was written (list items named `item`, as Arrow builds
    them), so a stage sees the same schema whether its input came from memory or a checkpoint."""
    return name_list_items(pq.read_table(path), "item")


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write `table` to `path` via temp file + fsync + rename; the old file (if any) stays until the rename."""
    table = canonical_table(table)
    _write_atomic(path, lambda handle: pq.write_table(table, handle, **PARQUET_SETTINGS))


def write_parquet_stream_atomic(tables: Iterable[pa.Table], schema: pa.Schema, path: str | Path) -> int:
    """Write `tables` one after another as one Parquet file (atomically, like `write_parquet_atomic`),
    holding one row group at a time. Row groups are cut every `row_group_size` rows whatever the
    tables' sizes, so the bytes equal `write_parquet_atomic` of their concatenation. Returns the rows."""
    size = PARQUET_SETTINGS["row_group_size"]
    settings = {k: v for k, v in PARQUET_SETTINGS.items() if k != "row_group_size"}
    written = 0

    def write(handle: BinaryIO) -> None:
        nonlocal written
        with pq.ParquetWriter(handle, schema, **settings) as writer:
            buffer: list[pa.Table] = []
            buffered = 0
            for table in tables:
                buffer.append(canonical_table(table.cast(schema)))
                buffered += table.num_rows
                while buffered >= size:
                    whole = pa.concat_tables(buffer).combine_chunks()
                    writer.write_table(whole.slice(0, size), row_group_size=size)
                    buffer, buffered = [whole.slice(size)], buffered - size
                    written += size
            if buffered or not written:  # an empty file still has its schema
                writer.write_table(pa.concat_tables(buffer).combine_chunks() if buffer else schema.empty_table(),
                                   row_group_size=size)
                written += buffered

    _write_atomic(path, write)
    return written


def sort_by_id(table: pa.Table) -> pa.Table:
    """Stable order for byte-identical output whatever order stages produced rows in."""
    if table.num_rows == 0:
        return table
    return table.take(pa.compute.sort_indices(table, sort_keys=[("id", "ascending")]))


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / DATA_DIR / SHARD_PATTERN.format(index=index)


def write_shard(table: pa.Table, out_dir: str | Path, index: int) -> Path:
    """A finished shard, its rows sorted by id, written atomically to `shard_path` (every executor's output)."""
    path = shard_path(out_dir, index)
    write_parquet_atomic(sort_by_id(table), path)
    return path


def shard_files(out_dir: str | Path) -> list[Path]:
    return sorted((Path(out_dir) / DATA_DIR).glob("train-*.parquet"))


def load_dataset_dir(out_dir: str | Path):
    """The pairs of a build directory as a `datasets.Dataset` (empty shards included)."""
    import datasets

    files = shard_files(out_dir)
    if not files:
        raise FileNotFoundError(f"{out_dir}: no Parquet shards under {DATA_DIR}/")
    tables = [pq.read_table(f) for f in files]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return datasets.Dataset(table)
