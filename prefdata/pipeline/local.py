"""The local executor: shards in order, every stage on each shard, one process.

Each shard's final table is written as soon as it is done (atomically, rows sorted by id), so
a long build keeps its finished shards even if a later shard fails. With `checkpoints`, each
stage's output per shard is kept too and a rerun resumes after the last finished stage
(`prefdata.pipeline.checkpoint.run_shard`, shared with other executors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from prefdata.pipeline.checkpoint import Checkpoints, run_shard
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.faults import fault_point
from prefdata.pipeline.stage import Stage, StageStats
from prefdata.schemas.errors import Reject
from prefdata.schemas.writers import shard_path, sort_by_id, write_parquet_atomic


def iter_shards(table: pa.Table, shard_size: int) -> Iterator[pa.Table]:
    if table.num_rows == 0:
        yield table
        return
    for start in range(0, table.num_rows, shard_size):
        yield table.slice(start, shard_size)


@dataclass
class ExecutionResult:
    stats: list[StageStats]
    rejects: list[Reject] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    rows: int = 0
    resumed: dict[str, int] = field(default_factory=lambda: {"shards": 0, "stages": 0})


def run_local(table: pa.Table | Iterable[pa.Table], stages: Sequence[Stage], ctx: BuildContext, out_dir: Path,
              shard_size: int, on_shard: Callable[[int, int | None], None] | None = None,
              checkpoints: Checkpoints | None = None) -> ExecutionResult:
    """`table` is the whole input, or its shards one by one (a streamed input: `on_shard`'s total is None)."""
    result = ExecutionResult(stats=[StageStats(stage.name) for stage in stages])
    if isinstance(table, pa.Table):
        shards: Iterable[pa.Table] = list(iter_shards(table, shard_size))
        total: int | None = len(shards)  # type: ignore[arg-type]
    else:
        shards, total = table, None
    for index, shard in enumerate(shards):
        done = run_shard(index, shard, stages, ctx, checkpoints)
        for position, stats in enumerate(done.stats):
            result.stats[position].merge(stats)
        result.rejects.extend(done.rejects)
        result.resumed["stages"] += done.resumed_stages
        result.resumed["shards"] += bool(stages) and done.resumed_stages == len(stages)
        path = shard_path(out_dir, index)
        write_parquet_atomic(sort_by_id(done.table), path)
        fault_point("shard_done")
        result.shards.append(path)
        result.rows += done.table.num_rows
        if on_shard is not None:
            on_shard(index + 1, total)
    return result
