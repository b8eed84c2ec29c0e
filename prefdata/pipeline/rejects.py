"""A build's rejects, spilled to disk as they are made.

A curation of 1M pairs can reject a quarter of them, each reject holding its row as JSON (about
2 KiB with a 64-d vector): kept in memory until the build ends they were a quarter of its peak.
`RejectLog` writes each batch (one stage on one shard) to a Parquet part under
`OUT/.prefdata/rejects/` as it comes, keeps only the count, and streams the parts into
`rejects.parquet` at the end, in shard order and, within a shard, in the order its stages made
them, whatever order the shards ran in. Without a folder (a log made in memory) the parts stay
as Arrow tables. The parts are scratch: a resumed build clears them and takes the earlier
stages' rejects from their checkpoints, as it takes their rows. A part written by another
process (a Ray actor, `write_part`) joins the log by `adopt`; its `order` (the stage's position)
places it within its shard.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.pipeline.checkpoint import STATE_DIR
from prefdata.schemas.errors import REJECT_SCHEMA, Reject, rejects_from_table, rejects_table
from prefdata.schemas.writers import write_parquet_stream_atomic

SPILL_DIR = f"{STATE_DIR}/rejects"  # inside the output folder, next to the checkpoints


class RejectLog:
    """The rejects of one build, added per shard; `folder`: where the parts are spilled (None: memory)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._parts: list[tuple[int, int, pa.Table | Path]] = []  # (shard, sequence, part)
        self._count = 0
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # a killed build's parts: checkpoints bring them back
            folder.mkdir(parents=True)

    @classmethod
    def spilled(cls, out_dir: Path) -> RejectLog:
        return cls(Path(out_dir) / SPILL_DIR)

    def add(self, rejects: Sequence[Reject] | pa.Table, shard: int = 0, order: int | None = None) -> None:
        """One batch of rejects of `shard`; `order` places it within the shard (default: after the
        batches added so far)."""
        table = rejects if isinstance(rejects, pa.Table) else rejects_table(list(rejects))
        if not table.num_rows:
            return
        order = len(self._parts) if order is None else order
        part = table if self.folder is None else write_part(self.folder, table, shard, order)
        self.adopt(shard, order, part, table.num_rows)

    def adopt(self, shard: int, order: int, part: pa.Table | Path, rows: int) -> None:
        """A part already made (by `write_part`, possibly in another process) joins the log."""
        self._parts.append((shard, order, part))
        self._count += rows

    def __len__(self) -> int:
        return self._count

    def tables(self) -> Iterator[pa.Table]:
        """The parts in shard order, each shard's in the order they were added."""
        for _, _, part in sorted(self._parts, key=lambda entry: entry[:2]):
            yield pq.read_table(part, schema=REJECT_SCHEMA) if isinstance(part, Path) else part

    def __iter__(self) -> Iterator[Reject]:
        for table in self.tables():
            yield from rejects_from_table(table)

    def write(self, path: Path, before: Sequence[Reject] = ()) -> int:
        """`rejects.parquet`: `before` (the source's rejects), then every part; one part in memory at a time."""
        head = [rejects_table(list(before))] if before else []
        return write_parquet_stream_atomic(itertools.chain(head, self.tables()), REJECT_SCHEMA, path)

    def close(self) -> None:
        """Remove the spilled parts (after `write`)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def write_part(folder: Path, table: pa.Table, shard: int, order: int) -> Path:
    """`table` (rejects) as the part file of (`shard`, `order`) in `folder`. A retried shard writes it
    again; the rename keeps a worker killed mid-write from leaving half a file under the name."""
    path = Path(folder) / f"shard-{shard:05d}-{order:06d}.parquet"
    partial = path.with_suffix(f".{os.getpid()}.partial")
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, path)
    return path
