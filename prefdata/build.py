"""`build(recipe)`: read the source, run the recipe's stages shard by shard, write the dataset.

The output folder holds `data/train-*.parquet` (the pairs), `rejects.parquet` (every row set
aside, with stage, file, row, field and reason), `recipe.json` (the resolved recipe) and
`stats.json` (rows in/out per stage, drops by reason, counters, timings, engines used, and the
dataset-level `estimates` stages contribute, e.g. `estimates.flip_rate` from the noise filter).
Build state lives in `.prefdata/` (stage checkpoints per shard, the request cache): run the same
command again after a crash and it resumes (`prefdata.pipeline.checkpoint`, `prefdata.engines.cache`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefdata import __version__
from prefdata.engines.base import Engine
from prefdata.pipeline.checkpoint import remove_temp_files
from prefdata.pipeline.executor import BuildJob, make_executor
from prefdata.pipeline.local import ExecutionResult
from prefdata.pipeline.stage import ChainError, check_chain
from prefdata.recipe import Recipe, RecipeError, load_recipe, parse_recipe
from prefdata.registry import make_stage
from prefdata.schemas.errors import InputError, rejects_table
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
from prefdata.schemas.writers import load_dataset_dir, shard_files, write_bytes_atomic, write_parquet_atomic
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
                   executor: ExecutorKind | str | None = None) -> Recipe:
    if isinstance(recipe, Recipe):
        data = recipe.resolved()
    elif isinstance(recipe, dict):
        data = parse_recipe(recipe).resolved()
    else:
        data = load_recipe(recipe).resolved()
    if input is not None:
        if data.get("source") is None:
            raise RecipeError("--input replaces [source] path; this recipe reads [[sources]]")
        data["source"]["path"] = str(input)
        data["source"]["hub"] = None
    if output is not None:
        data["output"]["dir"] = str(output)
    if limit is not None:  # with [[sources]]: caps each source
        for src in data["sources"] if data.get("sources") else [data["source"]]:
            src["limit"] = min(limit, src["limit"] or limit)
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


def prepare_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(str(out_dir), "output path exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)


def run_build(recipe: Recipe | str | Path | dict, *, input: str | Path | None = None, output: str | Path | None = None,
              limit: int | None = None, engines: dict[str, Engine] | None = None,
              on_shard=None, cache: bool | None = None, executor: ExecutorKind | str | None = None) -> BuildResult:
    """Run a recipe; returns the output folder and its stats. `engines` supplies already-loaded
    engines by name (they are used instead of loading the recipe's, and not closed here).
    `cache` overrides the recipe's `output.cache` (the request cache); `executor` the recipe's
    `[executor] kind` (local or ray)."""
    started = time.perf_counter()
    recipe = resolve_recipe(recipe, input=input, output=output, limit=limit, executor=executor)
    out_dir = recipe.output_dir()
    prepare_output_dir(out_dir)
    remove_temp_files(out_dir)  # half-written files of a killed build; their targets are intact
    opened = open_source(recipe)
    streamed = opened if isinstance(opened, StreamedSource) else None  # read shard by shard during the build
    source = opened.result() if isinstance(opened, StreamedSource) else opened
    stages = [make_stage(config) for config in recipe.stages]
    try:
        check_chain(stages, source.table.column_names)
    except ChainError as exc:
        raise RecipeError(f"recipe {recipe.name}: {exc}") from None
    use_cache = recipe.output.cache if cache is None else cache
    if engines and recipe.executor.kind != ExecutorKind.LOCAL:
        raise RecipeError(f"recipe {recipe.name}: engines passed in memory run only with the local executor "
                          f"(the {recipe.executor.kind.value} executor loads the recipe's engines in its workers)")
    job = BuildJob(recipe=recipe, table=source.table if streamed is None else None, stages=stages, out_dir=out_dir,
                   use_cache=use_cache, engines=engines or {}, on_shard=on_shard,
                   shards=streamed.shards if streamed else None, input_rows=streamed.input_rows if streamed else None)
    outcome = make_executor(recipe.executor).run(job)
    if streamed is not None:
        source = streamed.result()
    result, engine_ids, setup_seconds = outcome.result, outcome.engines, outcome.setup_seconds
    _remove_stale_shards(out_dir, result)
    rejects = source.rejects + result.rejects
    write_parquet_atomic(rejects_table(rejects), out_dir / REJECTS_FILE)
    stats = _stats(recipe, source, result, engine_ids, setup_seconds, time.perf_counter() - started)
    stats["resumed"] = result.resumed
    stats["request_cache"] = outcome.request_cache
    stats["executor"] = recipe.executor.kind.value
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


def _remove_stale_shards(out_dir: Path, result: ExecutionResult) -> None:
    keep = set(result.shards)
    for path in shard_files(out_dir):
        if path not in keep:
            path.unlink()


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
