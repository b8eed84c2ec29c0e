"""The Python API for training jobs: load a built dataset (a folder or a Hub repo), stream its
shards in fixed-size batches, and run a stage on an in-memory `datasets.Dataset` with a model
the job has already loaded.

Build a dataset and read it back (no engine needed for a pairs source):

>>> import json, pathlib, tempfile
>>> import prefdata
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."}
...         for i in range(5)]
>>> _ = (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
>>> recipe = {"source": {"path": str(tmp / "pairs.jsonl"), "kind": "pairs"},
...           "output": {"dir": str(tmp / "out"), "shard_size": 2}}
>>> train = prefdata.build(recipe)
>>> len(train), train[0]["prompt"], train[0]["chosen"]
(5, [{'role': 'user', 'content': 'What is 0 + 0?'}], [{'role': 'assistant', 'content': '0.'}])
>>> prefdata.load(tmp / "out").to_list() == train.to_list()
True

Stream it without loading everything (batches cross shard boundaries; the last may be short):

>>> [batch.num_rows for batch in prefdata.iter_batches(tmp / "out", batch_size=2)]
[2, 2, 1]
>>> stream = prefdata.load(tmp / "out", streaming=True)
>>> [row["prompt_id"] for row in stream] == list(train["prompt_id"])
True

Run a stage inside a job, with the job's own engine (see `apply`):

    engine = prefdata.engines.load_engine(prefdata.engines.EngineConfig(backend="transformers"))
    pairs = prefdata.apply(prompts, {"type": "on_policy", "n": 4}, engines={"policy": engine})
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.schemas.writers import shard_files

logger = logging.getLogger(__name__)
_REPO_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def load(source: str | Path, *, config: str | None = None, split: str = "train", streaming: bool = False,
         revision: str | None = None):
    """A built dataset as a `datasets.Dataset` (or `IterableDataset` with `streaming=True`).

    `source` is a build folder (its `data/train-*.parquet`) or, when no such folder exists, a Hub
    dataset id (`user/name`, loaded with `datasets.load_dataset(source, config, split=split)`;
    `HF_ENDPOINT` selects another Hub).
    """
    path = Path(source)
    if path.is_dir():
        if split != "train" or config not in (None, "default"):
            raise ValueError(f"{path}: a build folder has one config and one split ('train'); "
                             f"got config={config!r}, split={split!r}")
        if streaming:
            import datasets

            files = [str(f) for f in shard_files(path)]
            if not files:
                raise FileNotFoundError(f"{path}: no Parquet shards under data/")
            return datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True)
        from prefdata.schemas.writers import load_dataset_dir

        return load_dataset_dir(path)
    if not _REPO_ID.match(str(source)):
        raise FileNotFoundError(f"{source}: no such build folder (and not a Hub dataset id 'user/name')")
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(str(source), config, split=split, streaming=streaming, revision=revision)
    except DatasetNotFoundError:
        raise FileNotFoundError(f"{source}: no such build folder, and no such dataset on the Hub") from None


def iter_batches(source: str | Path, batch_size: int = 1024, columns: Sequence[str] | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """Record batches of `batch_size` rows (the last may be shorter) over a build folder's shards,
    in order, reading one row group at a time: memory stays bounded by the batch, not the dataset.

    `batch.to_pylist()` gives rows as dicts; `batch.column("prompt")` a column.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = shard_files(source)
    if not files:
        raise FileNotFoundError(f"{source}: no Parquet shards under data/")
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size).combine_chunks().to_batches()[0]
                rest = table.slice(batch_size)
                pending = rest.combine_chunks().to_batches() if rest.num_rows else []
                pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _make_stage(stage_or_config: Any):
    from pydantic import BaseModel

    from prefdata.pipeline.stage import Stage
    from prefdata.registry import STAGES, make_stage

    if isinstance(stage_or_config, Stage):
        return stage_or_config
    if isinstance(stage_or_config, str):
        stage_or_config = {"type": stage_or_config}
    if isinstance(stage_or_config, Mapping):
        kind = stage_or_config.get("type")
        if kind not in STAGES:
            raise ValueError(f"unknown stage type {kind!r}; known: {sorted(STAGES)}")
        return make_stage(STAGES[kind][0].model_validate(dict(stage_or_config)))
    if isinstance(stage_or_config, BaseModel):
        return make_stage(stage_or_config)
    raise TypeError(f"expected a Stage, a stage config, a dict with 'type', or a type name; got {type(stage_or_config).__name__}")


def _as_prompt_table(table: pa.Table) -> tuple[pa.Table, list]:
    """Rows of any prompt dataset (string or chat prompts, optional id/reference) -> PROMPT_SCHEMA.

    A row without an `id` column gets `dataset-<row>`; an unusable row becomes a reject."""
    from prefdata.schemas.errors import Reject, RowError
    from prefdata.schemas.pair import PROMPT_SCHEMA
    from prefdata.schemas.readers import ColumnMap, prompt_record

    if table.schema.remove_metadata().equals(PROMPT_SCHEMA.remove_metadata()):
        return table, []
    names = set(table.column_names)
    columns = ColumnMap(id="id" if "id" in names else None, reference="reference" if "reference" in names else None)
    records, rejects = [], []
    for index, row in enumerate(table.to_pylist()):
        # an implicit `reference` column may be null on some rows (no reference for them)
        row_columns = columns if row.get("reference") is not None else ColumnMap(id=columns.id, reference=None)
        try:
            records.append(prompt_record(row, row_columns, "dataset", index))
        except RowError as err:
            rejects.append(Reject("apply", err.reason, err.detail, file="<dataset>", row=index, field=err.field, payload=row))
    return pa.Table.from_pylist(records, schema=PROMPT_SCHEMA), rejects


def apply(dataset: Any, stage: Any, engines: Mapping[str, Any] | None = None, *, seed: int = 0,
          shard_size: int = 256, with_rejects: bool = False):
    """Run one stage on an in-memory `datasets.Dataset` (or `pa.Table`) with engines already loaded.

    `stage` is a `Stage`, its typed config, a dict with `type` (as in a recipe's `[[stages]]`) or
    a type name. `engines` maps the engine names the stage uses (e.g. "policy") to loaded
    `Engine`s (the job's own; they are not closed here).
    Shards of `shard_size` rows go through the same Stage contract as `prefdata build`
    (`check_chain`, `setup`, `run` per shard); per-row seeds derive from `seed` and row ids, so
    the result equals a build's for the same rows and seed.

    A generator that reads prompts accepts any prompt dataset: string or chat `prompt`, optional
    `id` (else `dataset-<row>`) and `reference`. Rows a stage sets aside are never lost: they are
    counted in a warning, and `with_rejects=True` returns `(dataset, rejects)` with `rejects` a
    `datasets.Dataset` of stage, row, row_id, reason, field, detail and the row as JSON.
    """
    import datasets

    from prefdata.engines.base import Engine
    from prefdata.engines.cache import CachedEngine
    from prefdata.pipeline.context import BuildContext, EnginePool
    from prefdata.pipeline.stage import StageStats, check_chain
    from prefdata.schemas.errors import rejects_table

    stage = _make_stage(stage)
    if isinstance(dataset, pa.Table):
        table = dataset
    elif isinstance(dataset, datasets.Dataset):
        table = dataset.with_format("arrow")[:] if len(dataset) else dataset.data.table
    else:
        raise TypeError(f"expected a datasets.Dataset or pyarrow.Table, got {type(dataset).__name__}")
    rejects: list = []
    if "prompt" in stage.reads and "chosen" not in table.column_names:
        table, rejects = _as_prompt_table(table)
    check_chain([stage], table.column_names)

    # The builder's engine wrapper (no cache): the engine sees the calls, so the batches, a build gives it.
    pool = EnginePool({}, wrap=lambda engine, identity: CachedEngine(engine, None, identity=identity))
    for name, engine in (engines or {}).items():
        if not isinstance(engine, Engine):
            raise TypeError(f"engines[{name!r}] must be a loaded prefdata Engine, got {type(engine).__name__} "
                            "(load one with prefdata.engines.load_engine)")
        pool.put(name, engine)
    ctx = BuildContext.for_input(pool, seed, table.num_rows, shard_size)
    outputs, stats = [], StageStats(stage.name)
    try:
        stage.setup(ctx)
        for start in range(0, max(table.num_rows, 1), shard_size):
            out, shard_stats = stage.run(table.slice(start, shard_size), ctx)
            outputs.append(out.table)
            rejects.extend(out.rejects)
            stats.merge(shard_stats)
    finally:
        pool.close()
    result = datasets.Dataset(pa.concat_tables(outputs) if len(outputs) > 1 else outputs[0])
    if rejects:
        reasons = Counter(r.reason.value for r in rejects)
        text = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        warnings.warn(f"prefdata.apply({stage.name}): {len(rejects)} row(s) set aside ({text}); "
                      "pass with_rejects=True to get them", stacklevel=2)
    logger.info("apply %s: %s", stage.name, stats.as_dict())
    if with_rejects:
        return result, datasets.Dataset(rejects_table(rejects))
    return result
