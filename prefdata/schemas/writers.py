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

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write `table` to `path` via temp file + fsync + rename; the old file (if any) stays until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            pq.write_table(table, handle, **PARQUET_SETTINGS)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def sort_by_id(table: pa.Table) -> pa.Table:
    """Stable order for byte-identical output whatever order stages produced rows in."""
    if table.num_rows == 0:
        return table
    return table.take(pa.compute.sort_indices(table, sort_keys=[("id", "ascending")]))


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / DATA_DIR / SHARD_PATTERN.format(index=index)


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
