"""Stage checkpoints per shard: a killed build, run again, redoes only the work it lost.

After each stage finishes a shard, its output table, rejects and stats are written under
`OUT/.prefdata/checkpoints/<position>-<stage>/shard-<index>-<key>.*`, each file atomically
(temporary name, fsync, rename), the `.json` last: a checkpoint exists once its JSON does.

The key of stage k on a shard chains fingerprints, so a change invalidates exactly what it
touches::

    key_0 = H(stage_0 identity, fingerprint of the input shard's rows)
    key_k = H(stage_k identity, key_{k-1})
    stage identity = `prefdata.pipeline.identity.stage_identity`: stage config, recipe seed, the
                     real identity of each engine it names (resolved hub commit, model folder
                     fingerprint, embedded package version, in-memory weight hash), schema and
                     package versions; unknown (an engine without an identity) = never reused

A whole-input stage (`prefdata.pipeline.stage.WholeInputStage`, map -> fit -> apply) at position
k fits once on every shard, so its fit key chains the keys of ALL shards' inputs, and each
shard's key after it chains the fit key::

    fit_k        = H(stage_k identity, "fit", [key_{k-1} of shard 0, shard 1, ...])
    key_k(shard) = H(stage_k identity, fit_k, key_{k-1}(shard))

The fitted state is `<position>-<stage>/fit-<fit key>.json`, written before any shard's apply: a
build killed between fit and apply reuses the fit when run again.

A changed stage config changes its key and every later key (their input changed) but no
earlier one, so a rerun re-uses the earlier stages' checkpoints. `run_shard` is the whole
resume logic for one shard and has no executor in it: the local executor calls it in a loop,
a distributed one calls it in its workers with the same `Checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.faults import fault_point
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.identity import stage_fingerprint
from prefdata.pipeline.stage import Stage, StageOutput, StageStats
from prefdata.schemas.errors import Reject, rejects_from_table, rejects_table
from prefdata.schemas.pair import fingerprint
from prefdata.schemas.writers import TEMP_MARKER, read_as_built, write_bytes_atomic, write_parquet_atomic

STATE_DIR = ".prefdata"  # build state inside the output folder: checkpoints and the request cache
CHECKPOINT_DIR = f"{STATE_DIR}/checkpoints"
REQUEST_CACHE_FILE = f"{STATE_DIR}/requests.sqlite"


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table's rows (column names and values, in order)."""
    return fingerprint({"columns": table.column_names, "rows": table.to_pylist()})


@dataclass
class StageCheckpoint:
    stats: StageStats
    rejects: list[Reject]
    table_path: Path


class Checkpoints:
    """Checkpoint files of one output folder for one recipe's stage chain."""

    def __init__(self, out_dir: str | Path, stage_fingerprints: Sequence[str]):
        self.root = Path(out_dir) / CHECKPOINT_DIR
        self.stage_fingerprints = list(stage_fingerprints)
        self.used: set[Path] = set()

    @classmethod
    def for_stages(cls, out_dir: str | Path, stages: Sequence[Stage], seed: int,
                   engine_identity: Callable[[str], dict[str, Any] | None] = lambda name: None,
                   engines: Iterable[str] = ()) -> Checkpoints:
        """Checkpoints keyed by each stage's run identity; `engine_identity(name)` gives the identity
        of each engine the recipe defines (`engines`), e.g. `EnginePool.identity`."""
        names = list(engines)
        return cls(out_dir, [stage_fingerprint(stage, seed, engine_identity, names) for stage in stages])

    def keys(self, shard: pa.Table) -> list[str]:
        if not self.stage_fingerprints:  # no stage, nothing to key (and hashing a big shard's rows is not free)
            return []
        keys, previous = [], table_fingerprint(shard)
        for stage_fp in self.stage_fingerprints:
            previous = fingerprint([stage_fp, previous])
            keys.append(previous)
        return keys

    def chain(self, shards: Sequence[pa.Table], whole: Sequence[bool]) -> tuple[list[list[str]], dict[int, str]]:
        """Keys of every (shard, position) and the fit key of every whole-input position (`whole[k]`)."""
        return self.chain_of([table_fingerprint(shard) for shard in shards], whole)

    def chain_of(self, fingerprints: Sequence[str], whole: Sequence[bool]) -> tuple[list[list[str]], dict[int, str]]:
        """`chain` from the input shards' `table_fingerprint`s (the shards need not be held together)."""
        previous = list(fingerprints)
        keys: list[list[str]] = [[] for _ in previous]
        fits: dict[int, str] = {}
        for position, stage_fp in enumerate(self.stage_fingerprints):
            if whole[position]:
                fits[position] = fingerprint([stage_fp, "fit", previous])
                previous = [fingerprint([stage_fp, fits[position], p]) for p in previous]
            else:
                previous = [fingerprint([stage_fp, p]) for p in previous]
            for index, key in enumerate(previous):
                keys[index].append(key)
        return keys, fits

    def _fit_path(self, position: int, stage: str, key: str) -> Path:
        return self.root / f"{position:02d}-{stage}" / f"fit-{key[:24]}.json"

    def has_fit(self, position: int, stage: str, key: str) -> bool:
        return self._fit_path(position, stage, key).is_file()

    def load_fit(self, position: int, stage: str, key: str) -> tuple[dict[str, Any], StageStats] | None:
        path = self._fit_path(position, stage, key)
        if not path.is_file():
            return None
        meta = json.loads(path.read_text())
        if meta.get("key") != key:
            return None
        self.used.add(path)
        return meta["fitted"], StageStats.from_record(meta["stats"], name=stage)

    def save_fit(self, position: int, stage: str, key: str, fitted: dict[str, Any], stats: StageStats) -> None:
        path = self._fit_path(position, stage, key)
        write_bytes_atomic(json.dumps({"key": key, "fitted": fitted, "stats": stats.to_record()}).encode(), path)
        self.used.add(path)

    def _base(self, position: int, stage: str, index: int, key: str) -> Path:
        return self.root / f"{position:02d}-{stage}" / f"shard-{index:05d}-{key[:24]}"

    def load(self, position: int, stage: str, index: int, key: str) -> StageCheckpoint | None:
        base = self._base(position, stage, index, key)
        meta_path = base.with_suffix(".json")
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        stats = StageStats.from_record(meta, name=stage)
        rejects = rejects_from_table(pq.read_table(base.with_suffix(".rejects.parquet")))
        self.used.update(base.with_suffix(s) for s in (".json", ".parquet", ".rejects.parquet"))
        return StageCheckpoint(stats, rejects, base.with_suffix(".parquet"))

    def save(self, position: int, stage: str, index: int, key: str, out: StageOutput, stats: StageStats) -> None:
        base = self._base(position, stage, index, key)
        write_parquet_atomic(out.table, base.with_suffix(".parquet"))
        write_parquet_atomic(rejects_table(out.rejects), base.with_suffix(".rejects.parquet"))
        meta = {"key": key, **stats.to_record()}
        write_bytes_atomic(json.dumps(meta, sort_keys=True).encode(), base.with_suffix(".json"))  # the commit
        self.used.update(base.with_suffix(s) for s in (".json", ".parquet", ".rejects.parquet"))

    def prune(self) -> int:
        """Delete checkpoints this build did not use (old configs, shards that no longer exist)."""
        removed = 0
        if not self.root.is_dir():
            return removed
        for path in sorted([*self.root.rglob("shard-*"), *self.root.rglob("fit-*")]):
            if path.is_file() and path not in self.used:
                path.unlink()
                removed += 1
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed


@dataclass
class ShardResult:
    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)
    stats: list[StageStats] = field(default_factory=list)
    resumed_stages: int = 0  # stages taken from checkpoints instead of run


def run_shard(index: int, shard: pa.Table, stages: Sequence[Stage], ctx: BuildContext,
              checkpoints: Checkpoints | None) -> ShardResult:
    """Run every stage on one shard, starting after the last stage with a checkpoint."""
    if checkpoints is None:
        result = ShardResult(shard)
        for position, stage in enumerate(stages):
            ctx.stage_started(position, index, result.table.num_rows)
            out, stats = stage.run(result.table, ctx)
            result.table = out.table
            result.rejects.extend(out.rejects)
            result.stats.append(stats)
        return result
    keys = checkpoints.keys(shard)
    result = ShardResult(shard)
    last: StageCheckpoint | None = None
    for position, stage in enumerate(stages):
        found = checkpoints.load(position, stage.name, index, keys[position])
        if found is None:
            break
        last = found
        result.rejects.extend(found.rejects)
        result.stats.append(found.stats)
        result.resumed_stages += 1
    if last is not None:
        result.table = read_as_built(last.table_path)
    for position in range(result.resumed_stages, len(stages)):
        stage = stages[position]
        ctx.stage_started(position, index, result.table.num_rows)
        out, stats = stage.run(result.table, ctx)
        checkpoints.save(position, stage.name, index, keys[position], out, stats)
        fault_point("stage_done")
        result.table = out.table
        result.rejects.extend(out.rejects)
        result.stats.append(stats)
    return result


def remove_temp_files(out_dir: str | Path) -> list[Path]:
    """Delete temporary files a killed build left in `out_dir` (its atomic writes never finished)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    leftovers = [p for p in out_dir.rglob(f".*{TEMP_MARKER}*") if p.is_file()]
    for path in leftovers:
        path.unlink()
    return leftovers
