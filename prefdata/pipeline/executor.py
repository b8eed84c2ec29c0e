"""Executors: what runs a recipe's stages over the source shards. `local` or `ray`, same output.

`builder.py` reads the source, checks the stage chain and hands a `BuildJob` (`builder.job_for`:
run settings, stages, stage configs and a factory; never the recipe) to the executor the recipe's
`[executor]` table (or `prefdata build --executor`) names (`builder.make_executor`). Every executor writes shard
`i` of the output as `data/train-<i>.parquet`, rows sorted by id, from the same per-shard stage
runs (rows draw their seeds from `ctx.seed_for(id, ...)`), so the dataset does not depend on
which executor built it; stage stats and rejects are merged the same way, and the per-shard stage
checkpoints (`prefdata.pipeline.checkpoint`) are the same files, so either executor resumes a
build the other started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from prefdata.engines.base import Engine
from prefdata.engines.config import EngineConfig
from prefdata.pipeline.checkpoint import REQUEST_CACHE_FILE, Checkpoints
from prefdata.pipeline.context import BuildContext, BuildProgress, EnginePool
from prefdata.pipeline.identity import engine_key
from prefdata.pipeline.local import ExecutionResult, iter_shards, run_local
from prefdata.pipeline.stage import Stage
from prefdata.types import ExecutorKind

if TYPE_CHECKING:
    from prefdata.engines.cache import RequestStore


class ActorResources(Protocol):
    """One stage's Ray actor pool (the recipe's `[executor.stages.<name>]`, `prefdata.recipe.StageResources`)."""

    concurrency: int | None
    num_cpus: float | None
    num_gpus: float | None


class ExecutorSettings(Protocol):
    """What an executor reads of the recipe's `[executor]` table (`prefdata.recipe.ExecutorConfig`)."""

    kind: ExecutorKind
    address: str | None
    max_retries: int
    local_num_cpus: int | None
    local_object_store_mb: int | None

    def resources(self, position: int, stage_name: str) -> ActorResources: ...


@dataclass(frozen=True)
class RunSettings:
    """What the executors need of a recipe (the builder fills it in): the seed rows derive theirs
    from, the shard size, the named engines, and the checkpoint and request-cache settings."""

    seed: int
    shard_size: int
    engines: Mapping[str, EngineConfig]
    checkpoints: bool = True
    cache_max_gib: float = 2.0


@dataclass
class BuildJob:
    """Everything an executor needs for one build: the source's rows, either read and checked
    (`table`) or streamed (`shards`: tables of `shard_size` rows, read while the build runs, with
    `input_rows` an upper bound of their rows), so an input larger than memory is never held whole.
    The builder makes it from a recipe (`prefdata.builder.job_for`): executors never see the recipe."""

    settings: RunSettings
    table: pa.Table | None
    stages: list[Stage]
    out_dir: Path
    use_cache: bool
    stage_configs: Sequence[Any] = ()  # the stages' typed configs, with `stage_factory`: what a Ray worker builds
    stage_factory: Callable[[Any], Stage] | None = None
    engines: Mapping[str, Engine] = field(default_factory=dict)  # already-loaded engines (local executor only)
    on_shard: Callable[[int, int | None], None] | None = None
    progress: BuildProgress | None = None  # stage/chunk progress (local executor; Ray reports shards only)
    shards: Iterable[pa.Table] | None = None
    input_rows: int | None = None

    def rows(self) -> int:
        """The input's rows (for a streamed input: the upper bound, so whole-input stages check it)."""
        return self.table.num_rows if self.table is not None else int(self.input_rows or 0)

    def shard_rows(self) -> list[int]:
        """Rows per shard, for progress (a streamed input: full shards up to `input_rows`, an upper bound)."""
        size = self.settings.shard_size
        if self.table is not None:
            return [shard.num_rows for shard in iter_shards(self.table, size)]
        rows = self.rows()
        return [min(size, rows - start) for start in range(0, rows, size)] or [0]

    def input_shards(self) -> Iterable[pa.Table]:
        return self.shards if self.shards is not None else iter_shards(self.table, self.settings.shard_size)


@dataclass
class ExecutorOutcome:
    result: ExecutionResult
    engines: dict[str, dict[str, Any]]  # engine identities, for stats.json
    setup_seconds: float
    request_cache: dict[str, int] | None


class Executor(Protocol):
    def run(self, job: BuildJob) -> ExecutorOutcome: ...


def engine_pool(settings: RunSettings, out_dir: Path, use_cache: bool,
                on_chunk: Callable[[str, int, int], None] | None = None) -> tuple[EnginePool, RequestStore | None]:
    """The build's engines behind the request cache (every executor process builds its own);
    `on_chunk(operation, done, total)` is called as an engine call's requests are answered."""
    from prefdata.engines.cache import CachedEngine, RequestStore

    store = RequestStore(out_dir / REQUEST_CACHE_FILE, int(settings.cache_max_gib * 1024**3)) if use_cache else None

    def wrap(engine: Engine, identity: dict[str, Any] | None) -> Engine:
        # Also without a store: the engine gets the same calls, so the same batches and numerics,
        # with the cache on or off. Keyed by the engine's real identity and
        # the package versions; an engine of unknown identity is never served from the cache.
        cached = CachedEngine(engine, store, identity=identity, key=engine_key(identity))
        cached.on_chunk = on_chunk
        return cached

    return EnginePool(settings.engines, wrap=wrap), store


def build_checkpoints(job: BuildJob, pool: EnginePool) -> Checkpoints | None:
    """The build's checkpoints, keyed by each stage's run identity (`prefdata.pipeline.identity`)."""
    if not job.settings.checkpoints:
        return None
    return Checkpoints.for_stages(job.out_dir, job.stages, job.settings.seed, pool.identity, pool.names())


class LocalExecutor:
    """Shards in order in this process (`run_local`); engines load once, in this process."""

    def run(self, job: BuildJob) -> ExecutorOutcome:
        pool, store = engine_pool(job.settings, job.out_dir, job.use_cache,
                                  on_chunk=job.progress.engine_chunk if job.progress is not None else None)
        for name, engine in job.engines.items():
            pool.put(name, engine)
        ctx = BuildContext.for_input(pool, job.settings.seed, job.rows(), job.settings.shard_size)
        ctx.progress = job.progress
        if job.progress is not None:  # before the engines load: an interrupt then still knows N shards
            job.progress.begin([stage.name for stage in job.stages], job.shard_rows())
        checkpoints = None
        try:
            started = time.perf_counter()
            for stage in job.stages:
                stage.setup(ctx)
            setup_seconds = time.perf_counter() - started
            checkpoints = build_checkpoints(job, pool)  # after setup: identities of the loaded engines
            result = run_local(job.table if job.shards is None else job.shards, job.stages, ctx, job.out_dir,
                               job.settings.shard_size,
                               on_shard=job.on_shard, checkpoints=checkpoints)
            engines = pool.loaded()
        finally:
            pool.close()
            if store is not None:
                store.close()
        if checkpoints is not None:
            checkpoints.prune()
        counts = dict(sorted(store.counts.items())) if store is not None else None
        return ExecutorOutcome(result, engines, setup_seconds, counts)
