"""Stage checkpoints per shard: a killed build, run again, redoes only the work it lost.

After each stage finishes a shard, its output table, rejects and stats are written under
`OUT/.prefdata/checkpoints/<position>-<stage>/shard-<index>-<key>.*`, each file atomically
(temporary name, fsync, rename), the `.json` last: a checkpoint exists once its JSON does.

The key of stage k on a shard chains fingerprints, so a change invalidates exactly what it
touches::

    key_0 = H(stage_0 identity, fingerprint of the input shard's rows)
    key_k = H(stage_k identity, key_{k-1})
    stage identity = stage config, the configs of the engines it names (model id, revision,
                     dtype, ...), prefdata's schema version and package version

A changed stage config changes its key and every later key (their input changed) but no
earlier one, so a rerun re-uses the earlier stages' checkpoints. `run_shard` is the whole
resume logic for one shard and has no executor in it: the local executor calls it in a loop,
a distributed one calls it in its workers with the same `Checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.faults import fault_point
from prefdata.pipeline.stage import Stage, StageOutput, StageStats
from prefdata.schemas.errors import Reject, rejects_table
from prefdata.schemas.pair import SCHEMA_VERSION, fingerprint
from prefdata.schemas.writers import TEMP_MARKER, read_as_built, write_bytes_atomic, write_parquet_atomic
from prefdata.types import RejectReason

STATE_DIR = ".prefdata"  # build state inside the output folder: checkpoints and the request cache
CHECKPOINT_DIR = f"{STATE_DIR}/checkpoints"
REQUEST_CACHE_FILE = f"{STATE_DIR}/requests.sqlite"


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table's rows (column names and values, in order)."""
    return fingerprint({"columns": table.column_names, "rows": table.to_pylist()})


def engine_names(config: Any, known: Iterable[str]) -> list[str]:
    """Engine names a stage config refers to: string values under keys named `engine`/`*_engine`
    or lists under `engines`, anywhere in the config (scorers and ensemble members included)."""
    known, found = set(known), set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, str) and str(key).endswith("engine") and item in known:
                    found.add(item)
                elif str(key) == "engines" and isinstance(item, list):
                    found.update(x for x in item if isinstance(x, str) and x in known)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return sorted(found)


def stage_fingerprint(stage: Stage, engines: Mapping[str, BaseModel]) -> str:
    """What determines a stage's output apart from its input: config, engines, versions."""
    from prefdata import __version__

    config = stage.config.model_dump(mode="json")
    used = {name: engines[name].model_dump(mode="json") for name in engine_names(config, engines)}
    return fingerprint({"stage": stage.name, "config": config, "engines": used,
                        "schema_version": SCHEMA_VERSION, "prefdata_version": __version__})


@dataclass
class StageCheckpoint:
    stats: StageStats
    rejects: list[Reject]
    table_path: Path


def _rejects_from_table(table: pa.Table) -> list[Reject]:
    return [Reject(stage=r["stage"], reason=RejectReason(r["reason"]), detail=r["detail"], file=r["file"], row=r["row"],
                   row_id=r["row_id"], field=r["field"], payload=r["payload"]) for r in table.to_pylist()]


class Checkpoints:
    """Checkpoint files of one output folder for one recipe's stage chain."""

    def __init__(self, out_dir: str | Path, stage_fingerprints: Sequence[str]):
        self.root = Path(out_dir) / CHECKPOINT_DIR
        self.stage_fingerprints = list(stage_fingerprints)
        self.used: set[Path] = set()

    @classmethod
    def for_stages(cls, out_dir: str | Path, stages: Sequence[Stage], engines: Mapping[str, BaseModel]) -> Checkpoints:
        return cls(out_dir, [stage_fingerprint(stage, engines) for stage in stages])

    def keys(self, shard: pa.Table) -> list[str]:
        if not self.stage_fingerprints:  # no stage, nothing to key (and hashing a big shard's rows is not free)
            return []
        keys, previous = [], table_fingerprint(shard)
        for stage_fp in self.stage_fingerprints:
            previous = fingerprint([stage_fp, previous])
            keys.append(previous)
        return keys

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
        rejects = _rejects_from_table(pq.read_table(base.with_suffix(".rejects.parquet")))
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
        for path in sorted(self.root.rglob("shard-*")):
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
        for stage in stages:
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
