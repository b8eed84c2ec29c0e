"""`build(recipe)`: read the source, run the recipe's stages shard by shard, write the dataset.

The output folder holds `data/train-*.parquet` (the pairs), `rejects.parquet` (every row set
aside, with stage, file, row, field and reason), `recipe.json` (the resolved recipe) and
`stats.json` (rows in/out per stage, drops by reason, counters, timings, engines used, the
methods run with their citations (`methods`, which the dataset card cites), and the dataset-level
`estimates` stages contribute, e.g. `estimates.flip_rate` from the noise filter).
Build state lives in `.prefdata/` (stage checkpoints per shard, the request cache): run the same
command again after a crash and it resumes (`prefdata.pipeline.checkpoint`, `prefdata.engines.cache`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from prefdata._version import __version__
from prefdata.card import method_citations
from prefdata.engines.base import Engine
from prefdata.pipeline.context import BuildProgress
from prefdata.pipeline.executor import BuildJob, Executor, LocalExecutor, RunSettings
from prefdata.pipeline.local import ExecutionResult
from prefdata.pipeline.stage import ChainError, Stage, check_chain
from prefdata.recipe import ExecutorConfig, Recipe, RecipeError, apply_overrides, load_recipe, parse_recipe
from prefdata.registry import make_stage
from prefdata.schemas.errors import InputError
from prefdata.schemas.output_folder import OutputFolder, check_output_folder
from prefdata.schemas.pair import SCHEMA_VERSION
from prefdata.schemas.readers import ReadResult, read_pairs, read_prompts
from prefdata.schemas.sources import (
    LOCAL_STREAM_ABOVE_BYTES,
    SourceRead,
    StreamedSource,
    local_bytes,
    open_streamed,
    read_mix,
    read_one,
)
from prefdata.schemas.writers import load_dataset_dir, shard_path, write_bytes_atomic
from prefdata.types import ExecutorKind, SourceKind

STATS_FILE, RECIPE_FILE, REJECTS_FILE = "stats.json", "recipe.json", "rejects.parquet"


@dataclass
class BuildResult:
    out_dir: Path
    stats: dict[str, Any]
    pushed: Any = None  # a prefdata.hub.PushResult when the recipe has a [push] table

    @property
    def dataset(self):
        return load_dataset_dir(self.out_dir)


def resolve_recipe(recipe: Recipe | str | Path | dict, *, input: str | Path | None = None,
                   output: str | Path | None = None, limit: int | None = None,
                   executor: ExecutorKind | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe with the command line's options applied: `--set KEY=VALUE` overrides first (dotted
    paths, validated like the recipe file and recorded in its `overrides`), then input/output/limit."""
    if isinstance(recipe, Recipe):
        data = recipe.resolved()
    elif isinstance(recipe, dict):
        data = parse_recipe(recipe).resolved()
    else:
        data = load_recipe(recipe).resolved()
    if overrides:
        data = apply_overrides(data, overrides)
        parse_recipe(data, "<recipe with --set overrides>")  # errors name the overridden key
    if input is not None:
        if data.get("source") is None:
            raise RecipeError("--input replaces [source] path; this recipe reads [[sources]]")
        data["source"]["path"] = str(input)
        data["source"]["hub"] = None
    if output is not None:
        data["output"]["dir"] = str(output)
    if limit is not None:  # replaces [source]'s limit; with [[sources]] it caps each source (the mix stays)
        if data.get("sources"):
            for src in data["sources"]:
                src["limit"] = min(limit, src["limit"] or limit)
        else:
            data["source"]["limit"] = limit
    if executor is not None:
        data.setdefault("executor", {})["kind"] = ExecutorKind(executor).value
    return parse_recipe(data, "<recipe with overrides>")


def read_source(recipe: Recipe) -> ReadResult:
    if recipe.sources is not None:
        return read_mix([src.spec() for src in recipe.sources], recipe.seed)
    src = recipe.source
    assert src is not None
    if src.hub is not None or src.preset is not None:  # prefdata.schemas.sources: Hub datasets, presets
        return read_one(src.spec())
    columns = src.columns.to_map()
    if src.kind == SourceKind.PROMPTS:
        return read_prompts(src.path, columns, src.format, src.limit)
    return read_pairs(src.path, columns, src.format, src.kind, src.limit)


def open_source(recipe: Recipe) -> ReadResult | StreamedSource:
    """The source read whole (`read_source`), or, for a single source that asks for `streaming`, a Hub
    source that streams, or a local input over 1 GiB, a `StreamedSource` the executor reads shard by
    shard (`prefdata.schemas.sources.open_streamed`; read whole after all when it is one shard)."""
    src = recipe.source
    if src is None or src.streaming is False:
        return read_source(recipe)
    plain = src.hub is None and src.preset is None and not src.streaming
    if plain and (src.path is None or local_bytes(src.path) <= LOCAL_STREAM_ABOVE_BYTES):
        return read_source(recipe)
    return open_streamed(src.spec(), recipe.output.shard_size)



class NoUsableRowsError(InputError):
    """The source gave no row a stage could use: the build stops before any engine loads."""


def check_usable(recipe: Recipe, source: ReadResult) -> None:
    """Raise `NoUsableRowsError` (counts by reject reason and the first reject) for an input
    without one usable row: an empty file must not load engines and report "built 0 pairs"."""
    if source.table.num_rows:
        return
    path = source_label(recipe)
    if not source.rejects:
        raise NoUsableRowsError(path, f"no rows to build from ({source.rows_read} rows read; the file is empty "
                                      "or holds only blank lines)")
    counts = Counter(r.reason.value for r in source.rejects)
    first = source.rejects[0]
    where = f"row {first.row}" + (f", field '{first.field}'" if first.field else "")
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
    raise NoUsableRowsError(path, f"no usable rows: all {len(source.rejects)} rows were rejected ({reasons}); "
                                  f"first: {where}: {first.reason.value}: {first.detail}")


def source_label(recipe: Recipe) -> str:
    """Names the input in errors: the file, the Hub repository, or the mix's sources."""
    names = [str(src.path) if src.path is not None else f"hub:{src.hub}" for src in recipe.source_list()]
    return names[0] if len(names) == 1 else "[[sources]] " + ", ".join(names)


def _listed(shards, folder: OutputFolder, out_dir: Path):
    """A streamed input's shards, each output file listed in the manifest before it is written."""
    for index, shard in enumerate(shards):
        folder.will_write([shard_path(out_dir, index)])
        yield shard


def planned_shards(out_dir: Path, rows: int, shard_size: int) -> list[Path]:
    """The shard files a build of `rows` input rows writes (listed in the manifest before writing)."""
    count = max(1, -(-rows // shard_size))
    return [shard_path(out_dir, index) for index in range(count)]


def make_executor(config: ExecutorConfig) -> Executor:
    """The executor the recipe's `[executor]` table names."""
    if config.kind == ExecutorKind.RAY:
        from prefdata.pipeline.ray_executor import (
            RayExecutor,  # ray is an optional extra: imported when asked
        )

        return RayExecutor(config)
    return LocalExecutor()


def job_for(recipe: Recipe, table: pa.Table | None, stages: list[Stage], out_dir: Path, use_cache: bool,
            **kwargs: Any) -> BuildJob:
    """The executor's job for a recipe: the run settings it needs (seed, shard size, engines,
    checkpoints, cache size) and, for workers that build their own stages, the stage configs and the
    registry's factory. Executors never see the recipe. `kwargs` are `BuildJob`'s other fields."""
    settings = RunSettings(seed=recipe.seed, shard_size=recipe.output.shard_size, engines=recipe.engines,
                           checkpoints=recipe.output.checkpoints, cache_max_gib=recipe.output.cache_max_gib)
    return BuildJob(settings=settings, table=table, stages=stages, out_dir=out_dir, use_cache=use_cache,
                    stage_configs=list(recipe.stages), stage_factory=make_stage, **kwargs)


def run_build(recipe: Recipe | str | Path | dict, *, input: str | Path | None = None, output: str | Path | None = None,
              limit: int | None = None, engines: dict[str, Engine] | None = None,
              on_shard=None, cache: bool | None = None, executor: ExecutorKind | str | None = None,
              overrides: list[str] | tuple[str, ...] = (), overwrite: bool = False,
              progress: BuildProgress | None = None,
              capture: Callable[[Path], AbstractContextManager] | None = None) -> BuildResult:
    """Run a recipe; returns the output folder and its stats. `engines` supplies already-loaded
    engines by name (they are used instead of loading the recipe's, and not closed here).
    `cache` overrides the recipe's `output.cache` (the request cache); `executor` the recipe's
    `[executor] kind` (local or ray); `overrides` are `KEY=VALUE` strings (`--set`). `progress`
    receives stage and engine-chunk progress (local executor); `capture(out_dir)`, once the output
    folder is claimed, is entered around the executor (engines load, run and close inside it: the
    CLI sends library output to a log there).

    Everything that can fail without an engine is checked before one loads: the recipe, the output
    folder (it must be new, empty or an earlier prefdata build; `overwrite` discards that earlier
    build's files and state), the input (at least one usable row) and the stage chain."""
    started = time.perf_counter()
    recipe = resolve_recipe(recipe, input=input, output=output, limit=limit, executor=executor, overrides=overrides)
    out_dir = recipe.output_dir()
    inputs = [src.path for src in recipe.source_list() if src.path is not None]
    check_output_folder(out_dir, inputs=inputs, overwrite=overwrite)
    opened = open_source(recipe)
    streamed = opened if isinstance(opened, StreamedSource) else None  # read shard by shard during the build
    source = opened.result() if isinstance(opened, StreamedSource) else opened
    if streamed is None:  # a streamed source has more than one shard of usable rows
        check_usable(recipe, source)
    stages = [make_stage(config) for config in recipe.stages]
    try:
        check_chain(stages, source.table.column_names)
    except ChainError as exc:
        raise RecipeError(f"recipe {recipe.name}: {exc}") from None
    use_cache = recipe.output.cache if cache is None else cache
    if engines and recipe.executor.kind != ExecutorKind.LOCAL:
        raise RecipeError(f"recipe {recipe.name}: engines passed in memory run only with the local executor "
                          f"(the {recipe.executor.kind.value} executor loads the recipe's engines in its workers)")
    with OutputFolder.claim(out_dir, inputs=inputs, overwrite=overwrite) as folder:
        if streamed is None:
            folder.will_write(planned_shards(out_dir, source.table.num_rows, recipe.output.shard_size))
        folder.will_write([out_dir / REJECTS_FILE, out_dir / STATS_FILE, out_dir / RECIPE_FILE])
        job = job_for(recipe, source.table if streamed is None else None, stages, out_dir, use_cache,
                      engines=engines or {}, on_shard=on_shard, progress=progress,
                      shards=_listed(streamed.shards, folder, out_dir) if streamed else None,
                      input_rows=streamed.input_rows if streamed else None)
        with capture(out_dir) if capture is not None else contextlib.nullcontext():
            outcome = make_executor(recipe.executor).run(job)
        if streamed is not None:
            source = streamed.result()
        result, engine_ids, setup_seconds = outcome.result, outcome.engines, outcome.setup_seconds
        folder.keep_only(result.shards)  # stale shards of an earlier, larger build in this folder
        result.rejects.write(out_dir / REJECTS_FILE, before=source.rejects)  # streamed from the spilled parts
        result.rejects.close()
        stats = _stats(recipe, source, result, engine_ids, setup_seconds, time.perf_counter() - started)
        stats["resumed"] = result.resumed
        stats["request_cache"] = outcome.request_cache
        stats["executor"] = recipe.executor.kind.value
        stats["methods"] = [asdict(method) for method in method_citations(stages)]  # the card cites them
        estimates = combined_estimates(stages, result)
        if estimates:
            stats["estimates"] = estimates
        write_bytes_atomic(json.dumps(recorded_recipe(recipe, source), indent=2).encode(), out_dir / RECIPE_FILE)
        write_bytes_atomic(json.dumps(stats, indent=2).encode(), out_dir / STATS_FILE)
    built = BuildResult(out_dir=out_dir, stats=stats)
    if recipe.push is not None:  # [push]: publish only after a complete build (prefdata/hub.py)
        from prefdata.hub import push_recipe_output

        built.pushed = push_recipe_output(out_dir, recipe.push)
    return built


def build(recipe: Recipe | str | Path | dict, **kwargs: Any):
    """Run a recipe and return its pairs as a `datasets.Dataset` (see `run_build` for options)."""
    return run_build(recipe, **kwargs).dataset


def recorded_recipe(recipe: Recipe, source: ReadResult) -> dict[str, Any]:
    """recipe.json: the resolved recipe, a Hub source's revision replaced by the commit it read."""
    data = recipe.resolved()
    if isinstance(source, SourceRead):
        infos = source.sources or [source.info]
        tables = data["sources"] if data.get("sources") else [data["source"]]
        for table, info in zip(tables, infos):
            if info.get("revision"):
                table["revision"] = info["revision"]
    return data


def combined_estimates(stages, result: ExecutionResult) -> dict[str, Any]:
    """stats.json `estimates`: each stage's shard estimates combined by the stage; a later stage's
    key replaces an earlier one's (e.g. `flip_rate`, read by the trainer's `--epsilon auto`)."""
    estimates: dict[str, Any] = {}
    for stage, stage_stats in zip(stages, result.stats):
        estimates.update(stage.combine_estimates(stage_stats.estimates))
    return estimates


def _stats(recipe: Recipe, source: ReadResult, result: ExecutionResult, engines: dict, setup_seconds: float,
           seconds: float) -> dict[str, Any]:
    read_drops: dict[str, int] = {}
    for reject in source.rejects:
        read_drops[reject.reason.value] = read_drops.get(reject.reason.value, 0) + 1
    return {
        "prefdata_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "recipe": recipe.name,
        "seed": recipe.seed,
        "source": _source_stats(recipe, source, read_drops),
        "stages": [s.as_dict() for s in result.stats],
        "output": {"rows": result.rows, "shards": len(result.shards), "rejects": len(source.rejects) + len(result.rejects)},
        "engines": engines,
        "seconds": {"total": round(seconds, 3), "engine_setup": round(setup_seconds, 3)},
    }


def _source_stats(recipe: Recipe, source: ReadResult, read_drops: dict[str, int]) -> dict[str, Any]:
    first = recipe.source_list()[0]
    kinds = sorted({src.kind.value for src in recipe.source_list()})
    stats: dict[str, Any] = {"path": str(first.path) if recipe.source is not None and first.path is not None else None,
                             "kind": kinds[0] if len(kinds) == 1 else "+".join(kinds), "rows_read": source.rows_read,
                             "rows_ok": source.table.num_rows, "drops": dict(sorted(read_drops.items()))}
    if isinstance(source, SourceRead) and source.rows_ok is not None:  # streamed: the table was never held
        stats["rows_ok"] = source.rows_ok
        stats["streamed"] = True
    if isinstance(source, SourceRead):
        if source.sources:
            stats["sources"] = source.sources
        else:
            stats.update({k: v for k, v in source.info.items() if k not in stats})
    return stats
