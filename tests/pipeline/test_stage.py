"""The stage contract is enforced on every shard: rows in = rows out + rejected rows (1:1 stages),
every prompt leads to pairs or a reject (generators); a stage that breaks it fails the build."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pytest
from pydantic import BaseModel

from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.pipeline.stage import AccountingError, Stage, StageOutput
from prefdata.schemas.errors import Reject
from prefdata.types import RejectReason


class _Config(BaseModel):
    keep: list[str] = []
    reject: list[str] = []
    extra: list[str] = []


class _Filter(Stage):
    """Keeps the ids in `keep`, rejects those in `reject`, and adds rows `extra` (to break the contract)."""

    name: ClassVar[str] = "filter_under_test"

    def process(self, table, ctx):
        rows = [r for r in table.to_pylist() if r["id"] in self.config.keep] + [{"id": i} for i in self.config.extra]
        rejects = [Reject(self.name, RejectReason.NO_PAIR, "x", row_id=i) for i in self.config.reject]
        return StageOutput(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string())])), rejects)


class _Generator(Stage):
    """One pair per prompt in `keep`, a reject per id in `reject`."""

    name: ClassVar[str] = "generator_under_test"
    replaces_columns: ClassVar[bool] = True

    def process(self, table, ctx):
        rows = [{"id": f"{i}-pair", "prompt_id": i} for i in self.config.keep]
        rejects = [Reject(self.name, RejectReason.NO_PAIR, "x", row_id=i) for i in self.config.reject]
        return StageOutput(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("prompt_id", pa.string())])),
                           rejects)


CTX = BuildContext(engines=EnginePool({}))
IDS = pa.table({"id": ["a", "b", "c"]})


def test_a_filter_that_accounts_for_every_row_passes():
    out, stats = _Filter(_Config(keep=["a", "c"], reject=["b"])).run(IDS, CTX)
    assert (stats.rows_in, stats.rows_out, dict(stats.drops)) == (3, 2, {"no_pair": 1})


@pytest.mark.parametrize("config, message", [
    (_Config(keep=["a", "c"]), r"input ids neither kept nor rejected b"),
    (_Config(keep=["a", "b", "c"], reject=["b"]), r"ids both kept and rejected b"),
    (_Config(keep=["a", "b", "c"], extra=["z"]), r"output ids not in its input z"),
    (_Config(keep=["a", "b", "c"], extra=["a"]), r"duplicated output ids a"),
])
def test_a_filter_that_loses_or_invents_rows_fails(config, message):
    with pytest.raises(AccountingError, match=rf"stage filter_under_test: broke the row accounting: .*{message}"):
        _Filter(config).run(IDS, CTX)


def test_a_generator_must_answer_every_prompt():
    _Generator(_Config(keep=["a", "b"], reject=["c"])).run(IDS, CTX)
    with pytest.raises(AccountingError, match=r"stage generator_under_test: 1 input rows gave neither output rows nor a reject: c"):
        _Generator(_Config(keep=["a", "b"])).run(IDS, CTX)


def test_a_generator_over_pairs_is_accounted_by_prompt_id():
    pairs = pa.table({"id": ["p1", "p2"], "prompt_id": ["a", "b"]})
    _Generator(_Config(keep=["a"], reject=["p2"])).run(pairs, CTX)
    with pytest.raises(AccountingError, match="p2"):
        _Generator(_Config(keep=["a"])).run(pairs, CTX)
