"""Checkpoint orchestration: which stages rerun after a kill or a config change.

Plain table stages without engines (the logic under test is bookkeeping, not generation; the
real-engine kill-and-resume proof is tests/pipeline/test_resume.py).
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ConfigDict

from prefdata.engines.config import EngineConfig
from prefdata.pipeline.checkpoint import CHECKPOINT_DIR, Checkpoints, remove_temp_files
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.pipeline.identity import engine_names, stage_fingerprint
from prefdata.pipeline.local import run_local
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import Reject
from prefdata.types import RejectReason

CALLS: Counter = Counter()


class AddConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["add"] = "add"
    column: str
    amount: int = 1
    engine: str | None = None


class AddStage(Stage):
    """x + amount into `column`; rows with x == 3 are rejected (so rejects are checkpointed too)."""

    name: ClassVar[str] = "add"

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        CALLS[(self.config.column, table.column("id")[0].as_py())] += 1
        keep = pc.not_equal(table.column("x"), 3)
        rejects = [Reject(self.name, RejectReason.NO_PAIR, "x is 3", row_id=i) for i, k in
                   zip(table.column("id").to_pylist(), keep.to_pylist()) if not k]
        table = table.filter(keep)
        return StageOutput(table.append_column(self.config.column, pc.add(table.column("x"), self.config.amount)),
                           rejects, Counter(seen=table.num_rows))


def _run(out, configs, engines=None, seed=0):
    table = pa.table({"id": [f"r{i}" for i in range(6)], "x": list(range(6))})
    stages = [AddStage(c) for c in configs]
    pool = EnginePool(engines or {})  # identities of vLLM/transformers configs need no loading
    checkpoints = Checkpoints.for_stages(out, stages, seed, pool.identity, pool.names())
    result = run_local(table, stages, BuildContext(EnginePool({})), out, shard_size=2, checkpoints=checkpoints)
    checkpoints.prune()
    return result


def _data(out):
    return [(p.name, p.read_bytes()) for p in sorted((out / "data").glob("*.parquet"))]


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()


def test_rerun_skips_finished_shards_and_restores_rejects_and_counts(tmp_path):
    stages = [AddConfig(column="a"), AddConfig(column="b")]
    first = _run(tmp_path, stages)
    assert sum(CALLS.values()) == 6  # 3 shards x 2 stages
    data = _data(tmp_path)
    CALLS.clear()
    again = _run(tmp_path, stages)
    assert sum(CALLS.values()) == 0 and again.resumed == {"shards": 3, "stages": 6}
    assert _data(tmp_path) == data
    assert [r.row_id for r in again.rejects] == [r.row_id for r in first.rejects] == ["r3"]
    assert [s.as_dict() | {"seconds": 0} for s in again.stats] == [s.as_dict() | {"seconds": 0} for s in first.stats]


def test_killed_between_shards_redoes_only_the_missing_shard(tmp_path):
    stages = [AddConfig(column="a"), AddConfig(column="b")]
    _run(tmp_path, stages)
    data = _data(tmp_path)
    # what a kill leaves: shard 2's second stage never committed (its JSON is written last)
    for meta in (tmp_path / CHECKPOINT_DIR).glob("01-add/shard-00002-*.json"):
        meta.unlink()
    CALLS.clear()
    result = _run(tmp_path, stages)
    assert dict(CALLS) == {("b", "r4"): 1}
    assert result.resumed == {"shards": 2, "stages": 5}
    assert _data(tmp_path) == data


def test_changed_stage_config_invalidates_that_stage_and_later_ones_only(tmp_path):
    _run(tmp_path, [AddConfig(column="a"), AddConfig(column="b"), AddConfig(column="c")])
    CALLS.clear()
    _run(tmp_path, [AddConfig(column="a"), AddConfig(column="b", amount=5), AddConfig(column="c")])
    assert {column for column, _ in CALLS} == {"b", "c"}  # stage 0 came from its checkpoints
    table = pq.read_table(tmp_path / "data" / "train-00000.parquet")
    assert table.column("b").to_pylist() == [5, 6]
    # the old config's checkpoints of stages 1 and 2 are pruned, stage 0's are still the same files
    assert sorted(p.parent.name for p in (tmp_path / CHECKPOINT_DIR).rglob("*.json")) == \
        ["00-add"] * 3 + ["01-add"] * 3 + ["02-add"] * 3


def test_changed_engine_invalidates_the_stages_that_name_it(tmp_path):
    engines = {"policy": EngineConfig(backend="transformers"), "judge": EngineConfig(backend="transformers")}
    stages = [AddConfig(column="a", engine="policy"), AddConfig(column="b", engine="judge")]
    _run(tmp_path, stages, engines)
    CALLS.clear()
    _run(tmp_path, stages, {**engines, "judge": EngineConfig(backend="transformers", revision="v2")})
    assert {column for column, _ in CALLS} == {"b"}


def test_changed_seed_invalidates_every_stage(tmp_path):
    stages = [AddConfig(column="a"), AddConfig(column="b")]
    _run(tmp_path, stages, seed=0)
    CALLS.clear()
    assert _run(tmp_path, stages, seed=0).resumed == {"shards": 3, "stages": 6}
    result = _run(tmp_path, stages, seed=1)
    assert sum(CALLS.values()) == 6 and result.resumed == {"shards": 0, "stages": 0}


def test_engine_names_finds_nested_references():
    config = {"engine": "policy", "scorer": {"type": "judge", "engine": "judge"},
              "members": [{"reward_engine": "rm"}, {"engine": "not-an-engine"}], "engines": ["policy", "emb"]}
    assert engine_names(config, ["policy", "judge", "rm", "emb", "unused"]) == ["emb", "judge", "policy", "rm"]


def test_stage_fingerprint_changes_with_config_and_seed():
    def fp(column, seed=0):
        return stage_fingerprint(AddStage(AddConfig(column=column)), seed, lambda name: None, [])

    assert fp("a") == fp("a")
    assert fp("a") != fp("b")
    assert fp("a") != fp("a", seed=1)


def test_stage_with_an_engine_of_unknown_identity_is_never_reused(tmp_path):
    def identity(name):
        return None  # what `Engine.identity()` of an engine that cannot tell returns

    stages = [AddStage(AddConfig(column="a")), AddStage(AddConfig(column="b", engine="policy"))]
    first = Checkpoints.for_stages(tmp_path, stages, 0, identity, ["policy"])
    again = Checkpoints.for_stages(tmp_path, stages, 0, identity, ["policy"])
    assert first.stage_fingerprints[0] == again.stage_fingerprints[0]  # no engine: reused
    assert first.stage_fingerprints[1] != again.stage_fingerprints[1]  # unknown engine: never matches


def test_leftover_temp_files_are_removed(tmp_path):
    (tmp_path / "data").mkdir()
    leftover = tmp_path / "data" / ".train-00000.parquet.tmp-123"
    leftover.write_bytes(b"PAR1 half")
    keep = tmp_path / "data" / "train-00000.parquet"
    keep.write_bytes(b"whole")
    assert remove_temp_files(tmp_path) == [leftover]
    assert keep.exists() and not leftover.exists()
