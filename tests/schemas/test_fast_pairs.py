"""The vectorised Parquet read of plain pairs gives exactly what the row-by-row reader gives:
same rows, ids, chats, scores, metadata and the same rejects for the bad rows."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.recipe import parse_recipe
from prefdata.schemas.fast_pairs import pair_id
from prefdata.schemas.pair import make_pair_id
from prefdata.schemas.readers import ColumnMap, read_pairs
from prefdata.schemas.sources import ChunkReader, read_one


def rows(n: int) -> list[dict]:
    out = [{"id": f"r{i}", "prompt": f"Question {i}? é", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}.",
            "cs": float(i), "rs": i - 0.5} for i in range(n)]
    return out


def bad_rows() -> list[dict]:
    return [
        {"id": "x1", "prompt": "", "chosen": "a", "rejected": "b", "cs": 1.0, "rs": 0.0},               # empty prompt
        {"id": "x2", "prompt": "q", "chosen": "same", "rejected": "same", "cs": 1.0, "rs": 0.0},       # identical
        {"id": "r3", "prompt": "q", "chosen": "a", "rejected": "b", "cs": 1.0, "rs": 0.0},             # duplicate id
        {"id": "x4", "prompt": "q", "chosen": "a", "rejected": "b", "cs": math.nan, "rs": 0.0},        # NaN score
        {"id": None, "prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "a", "rejected": "b", "cs": None, "rs": None},
        {"id": "x6", "prompt": "q", "chosen": None, "rejected": "b", "cs": 1.0, "rs": 0.0},            # missing chosen
    ]


COLUMNS = {"chosen_score": "cs", "rejected_score": "rs"}


def test_pair_id_is_make_pair_id():
    for source_id in ["r1", 'quote " and \\ slash', "ünïcode\n", "12"]:
        assert pair_id(source_id) == make_pair_id(source_id, "input", {"kind": "pairs"})


def test_vectorised_parquet_read_equals_the_row_by_row_read(tmp_path):
    path = tmp_path / "pairs.parquet"
    data = rows(300) + bad_rows() + rows(700)[300:]
    pq.write_table(pa.Table.from_pylist(data), path, row_group_size=128)
    spec = parse_recipe({"source": {"path": str(path), "kind": "pairs", "columns": COLUMNS}}).source.spec()
    reader = ChunkReader(spec, chunk_rows=100)
    assert reader._parquet_batches() is not None  # the vectorised path is the one under test
    chunks = list(reader)
    assert [c.num_rows for c in chunks] == [100] * 7 + [1]  # 701 usable rows cut like iter_shards
    fast = pa.concat_tables(chunks)
    slow = read_pairs(path, ColumnMap(**COLUMNS), kind="pairs")
    assert fast.schema == slow.table.schema
    assert fast.to_pylist() == slow.table.to_pylist()
    assert [(r.reason, r.row, r.field) for r in reader.rejects] == [(r.reason, r.row, r.field) for r in slow.rejects]
    assert len(reader.rejects) == 5 and reader.rows_read == slow.rows_read == 706


def test_vectorised_read_stops_at_the_limit(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows(5000)), path)
    spec = parse_recipe({"source": {"path": str(path), "kind": "pairs", "limit": 1234}}).source.spec()
    result = read_one(spec)
    assert result.table.num_rows == 1234 and result.rows_read == 1234
    assert result.table.column("prompt_id").to_pylist()[-1] == "r1233"
