"""The local executor: shards in order, every stage on each shard, one process.

Each shard's final table is written as soon as it is done (atomically, rows sorted by id), so
a long build keeps its finished shards even if a later shard fails. With `checkpoints`, each
stage's output per shard is kept too and a rerun resumes after the last finished stage
(`prefdata.pipeline.checkpoint.run_shard`, shared with other executors).

A whole-input stage (`WholeInputStage`: map -> fit -> apply) is a barrier: every shard runs the
stages before it and its `score`, then the stage fits once on the fit view (its declared columns
of all shards, in shard order), then every shard runs its `apply` and goes on. The fitted state
is checkpointed before any apply, so a build killed between fit and apply reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from prefdata.faults import fault_point
from prefdata.pipeline.checkpoint import Checkpoints, run_shard
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.rejects import RejectLog
from prefdata.pipeline.stage import Stage, StageOutput, StageStats, WholeInputStage, fit_view, is_whole_input
from prefdata.schemas.writers import read_as_built, write_shard


def iter_shards(table: pa.Table, shard_size: int) -> Iterator[pa.Table]:
    if table.num_rows == 0:
        yield table
        return
    for start in range(0, table.num_rows, shard_size):
        yield table.slice(start, shard_size)


@dataclass
class ExecutionResult:
    stats: list[StageStats]
    rejects: RejectLog = field(default_factory=RejectLog)  # the executors spill theirs under the output folder
    shards: list[Path] = field(default_factory=list)
    rows: int = 0
    resumed: dict[str, int] = field(default_factory=lambda: {"shards": 0, "stages": 0})


def run_local(table: pa.Table | Iterable[pa.Table], stages: Sequence[Stage], ctx: BuildContext, out_dir: Path,
              shard_size: int, on_shard: Callable[[int, int | None], None] | None = None,
              checkpoints: Checkpoints | None = None) -> ExecutionResult:
    """`table` is the whole input, or its shards one by one (a streamed input: `on_shard`'s total is None)."""
    result = ExecutionResult(stats=[StageStats(stage.name) for stage in stages], rejects=RejectLog.spilled(out_dir))
    if isinstance(table, pa.Table):
        shards: Iterable[pa.Table] = list(iter_shards(table, shard_size))
        total: int | None = len(shards)  # type: ignore[arg-type]
    else:
        shards, total = table, None
    if any(is_whole_input(stage) for stage in stages):
        # A whole-input stage's barrier needs every shard's rows: a streamed input is gathered here.
        return _run_with_barriers(list(shards), stages, ctx, out_dir, on_shard, checkpoints, result)
    for index, shard in enumerate(shards):
        done = run_shard(index, shard, stages, ctx, checkpoints)
        for position, stats in enumerate(done.stats):
            result.stats[position].merge(stats)
        result.rejects.add(done.rejects, index)
        result.resumed["stages"] += done.resumed_stages
        result.resumed["shards"] += bool(stages) and done.resumed_stages == len(stages)
        path = write_shard(done.table, out_dir, index)
        fault_point("shard_done")
        result.shards.append(path)
        result.rows += done.table.num_rows
        if ctx.progress is not None:
            ctx.progress.shard_done(index, [(s.rows_in, s.rows_out) for s in done.stats], done.resumed_stages)
        if on_shard is not None:
            on_shard(index + 1, total)
    return result


def join_phases(score: StageStats, apply: StageStats) -> StageStats:
    """One shard's stats of a whole-input stage: its score and apply phases as one stage."""
    return StageStats(apply.name, rows_in=score.rows_in, rows_out=apply.rows_out, drops=apply.drops,
                      counters=score.counters + apply.counters, seconds=score.seconds + apply.seconds,
                      estimates=score.estimates + apply.estimates)


@dataclass
class _Shard:
    index: int
    table: pa.Table | Path  # a Path: the checkpoint of the last finished stage, read when needed
    next: int = 0  # position of the first stage still to run
    stats: list[StageStats] = field(default_factory=list)

    def loaded(self) -> pa.Table:
        if isinstance(self.table, Path):
            self.table = read_as_built(self.table)
        return self.table


def _resume(shard: _Shard, stages: Sequence[Stage], whole: list[bool], keys: list[str], fits: dict[int, str],
            checkpoints: Checkpoints, rejects: RejectLog) -> None:
    """Take every stage of `shard` that has a checkpoint, stopping at a whole-input stage whose fit
    has none (its fit needs every shard's input, so every shard redoes it from there)."""
    for position, stage in enumerate(stages):
        if whole[position] and not checkpoints.has_fit(position, stage.name, fits[position]):
            return
        found = checkpoints.load(position, stage.name, shard.index, keys[position])
        if found is None:
            return
        rejects.add(found.rejects, shard.index)
        shard.stats.append(found.stats)
        shard.table = found.table_path
        shard.next += 1


def _run_stage(shard: _Shard, position: int, stage: Stage, ctx: BuildContext, keys: list[list[str]] | None,
               checkpoints: Checkpoints | None, rejects: RejectLog) -> None:
    table = shard.loaded()
    ctx.stage_started(position, shard.index, table.num_rows)
    out, stats = stage.run(table, ctx)
    _commit(shard, position, stage, out, stats, keys, checkpoints, rejects)
    ctx.stage_done(position, shard.index, stats.rows_in)


def _commit(shard: _Shard, position: int, stage: Stage, out: StageOutput, stats: StageStats,
            keys: list[list[str]] | None, checkpoints: Checkpoints | None, rejects: RejectLog) -> None:
    """A stage finished on a shard: checkpoint it, then move the shard past it."""
    if checkpoints is not None:
        checkpoints.save(position, stage.name, shard.index, keys[shard.index][position], out, stats)
        fault_point("stage_done")
    shard.table, shard.next = out.table, position + 1
    rejects.add(out.rejects, shard.index)
    shard.stats.append(stats)


def _run_with_barriers(tables: list[pa.Table], stages: Sequence[Stage], ctx: BuildContext, out_dir: Path,
                       on_shard: Callable[[int, int], None] | None, checkpoints: Checkpoints | None,
                       result: ExecutionResult) -> ExecutionResult:
    whole = [is_whole_input(stage) for stage in stages]
    shards = [_Shard(index, table) for index, table in enumerate(tables)]
    keys, fits = checkpoints.chain(tables, whole) if checkpoints is not None else (None, {})
    if checkpoints is not None:
        for shard in shards:
            _resume(shard, stages, whole, keys[shard.index], fits, checkpoints, result.rejects)
            for position, stats in enumerate(shard.stats):
                ctx.stage_done(position, shard.index, stats.rows_in, resumed=True)
            result.resumed["stages"] += shard.next
            result.resumed["shards"] += shard.next == len(stages)
    start = 0
    for bound in [p for p, w in enumerate(whole) if w] + [len(stages)]:
        for shard in shards:
            for position in range(max(shard.next, start), bound):
                _run_stage(shard, position, stages[position], ctx, keys, checkpoints, result.rejects)
            if bound == len(stages):
                _finish(shard, out_dir, result, on_shard, len(shards))
        if bound < len(stages):
            _barrier(shards, bound, stages[bound], ctx, keys, fits, checkpoints, result)
        start = bound + 1
    for shard in shards:
        for position, stats in enumerate(shard.stats):
            result.stats[position].merge(stats)
    return result


def _barrier(shards: list[_Shard], position: int, stage: WholeInputStage, ctx: BuildContext,
             keys: list[list[str]] | None, fits: dict[int, str], checkpoints: Checkpoints | None,
             result: ExecutionResult) -> None:
    """Score every shard still before `position`, fit once (or take the checkpointed fit), apply."""
    loaded = checkpoints.load_fit(position, stage.name, fits[position]) if checkpoints is not None else None
    pending = [shard for shard in shards if shard.next == position]
    if loaded is not None:
        fitted, fit_stats = loaded
    elif not pending:
        return
    scored = {}
    for shard in pending:  # the score phase is the stage's per-shard work: progress counts it
        table = shard.loaded()
        ctx.stage_started(position, shard.index, table.num_rows)
        scored[shard.index] = stage.run_score(table, ctx)
        shard.table = scored[shard.index][0].table
        ctx.stage_done(position, shard.index, scored[shard.index][1].rows_in)
    if loaded is None:  # every shard is pending: `_resume` stops all of them at a fit without a checkpoint
        fitted, fit_stats = stage.run_fit(fit_view(stage, [shard.loaded() for shard in shards]), ctx)
        if checkpoints is not None:
            checkpoints.save_fit(position, stage.name, fits[position], fitted, fit_stats)
        fault_point("fit_done")
    ctx.info.update(stage.publish(fitted))  # for later fits, fresh or checkpointed alike
    result.stats[position].merge(fit_stats)
    for shard in pending:
        score_out, score_stats = scored.pop(shard.index)
        out, apply_stats = stage.run_apply(score_out.table, fitted, ctx)
        _commit(shard, position, stage, out, join_phases(score_stats, apply_stats), keys, checkpoints, result.rejects)


def _finish(shard: _Shard, out_dir: Path, result: ExecutionResult, on_shard: Callable[[int, int], None] | None,
            total: int) -> None:
    table = shard.loaded()
    path = write_shard(table, out_dir, shard.index)
    fault_point("shard_done")
    result.shards.append(path)
    result.rows += table.num_rows
    shard.table = path  # written: let the table go
    if on_shard is not None:
        on_shard(shard.index + 1, total)
