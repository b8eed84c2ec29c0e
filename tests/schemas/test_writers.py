"""Writers: atomic, deterministic Parquet shards; build directories load with `datasets`."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefdata.schemas import SCHEMA_VERSION, load_dataset_dir, read_pairs, write_parquet_atomic
from prefdata.schemas.pair import schema_version_of
from prefdata.schemas.writers import shard_files, shard_path, sort_by_id, write_bytes_atomic


@pytest.fixture(scope="module")
def hh_table(fixtures_dir):
    result = read_pairs(fixtures_dir / "hh_small.jsonl", kind="hh")
    assert result.rejects == []
    return result.table


def test_shard_layout(tmp_path):
    assert shard_path(tmp_path, 0) == tmp_path / "data" / "train-00000.parquet"
    assert shard_path(tmp_path, 12) == tmp_path / "data" / "train-00012.parquet"


def test_write_leaves_no_temp_files_and_reads_back(hh_table, tmp_path):
    path = shard_path(tmp_path, 0)
    write_parquet_atomic(hh_table, path)  # creates data/
    assert sorted(os.listdir(path.parent)) == ["train-00000.parquet"]
    back = pq.read_table(path)
    assert back.equals(hh_table)
    assert back.schema == hh_table.schema
    assert schema_version_of(pq.read_schema(path)) == SCHEMA_VERSION
    assert schema_version_of(back.schema) == SCHEMA_VERSION


def test_same_table_gives_identical_bytes(hh_table, tmp_path):
    a, b = tmp_path / "a" / "x.parquet", tmp_path / "b" / "x.parquet"
    write_parquet_atomic(hh_table, a)
    write_parquet_atomic(hh_table, b)
    assert a.read_bytes() == b.read_bytes()
    # rewriting in place gives the same bytes too (and replaces the old file)
    write_parquet_atomic(hh_table, a)
    assert a.read_bytes() == b.read_bytes()


def test_overwrite_replaces_whole_file(hh_table, tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet_atomic(hh_table, path)
    write_parquet_atomic(hh_table.slice(0, 1), path)
    assert pq.read_table(path).num_rows == 1
    assert os.listdir(tmp_path) == ["x.parquet"]


def test_failed_write_leaves_old_file_and_no_temp(hh_table, tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet_atomic(hh_table, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises for a non-table
        write_parquet_atomic("not a table", path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.parquet"]


def test_write_bytes_atomic(tmp_path):
    path = tmp_path / "sub" / "stats.json"
    write_bytes_atomic(b"{}", path)
    write_bytes_atomic(b'{"a": 1}', path)
    assert path.read_bytes() == b'{"a": 1}'
    assert os.listdir(path.parent) == ["stats.json"]


def test_sort_by_id(hh_table):
    shuffled = hh_table.take([2, 0, 1])
    ordered = sort_by_id(shuffled)
    ids = ordered.column("id").to_pylist()
    assert ids == sorted(hh_table.column("id").to_pylist())
    assert ordered.equals(sort_by_id(hh_table))
    # rows move whole: each id keeps its own prompt_id
    pairs = dict(zip(hh_table.column("id").to_pylist(), hh_table.column("prompt_id").to_pylist()))
    assert ordered.column("prompt_id").to_pylist() == [pairs[i] for i in ids]
    empty = hh_table.slice(0, 0)
    assert sort_by_id(empty) is empty


def test_sorted_writes_do_not_depend_on_row_order(hh_table, tmp_path):
    write_parquet_atomic(sort_by_id(hh_table.take([2, 0, 1])), tmp_path / "a.parquet")
    write_parquet_atomic(sort_by_id(hh_table.take([1, 2, 0])), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_load_dataset_dir_concatenates_shards_in_order(hh_table, tmp_path):
    write_parquet_atomic(hh_table.slice(2), shard_path(tmp_path, 1))
    write_parquet_atomic(hh_table.slice(0, 2), shard_path(tmp_path, 0))
    write_parquet_atomic(hh_table.slice(0, 0), shard_path(tmp_path, 2))  # an empty shard
    assert [p.name for p in shard_files(tmp_path)] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    ds = load_dataset_dir(tmp_path)
    assert ds.num_rows == 3
    assert ds.to_list() == hh_table.to_pylist()
    assert list(ds.features) == hh_table.column_names


def test_load_dataset_dir_without_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        load_dataset_dir(tmp_path)


def test_empty_table_round_trip(hh_table, tmp_path):
    empty = hh_table.schema.empty_table()
    write_parquet_atomic(empty, shard_path(tmp_path, 0))
    back = pq.read_table(shard_path(tmp_path, 0))
    assert back.num_rows == 0 and back.schema == hh_table.schema
    assert isinstance(back, pa.Table)


def test_a_table_read_back_writes_the_same_bytes(hh_table, tmp_path):
    """A resumed build writes tables read from checkpoints: they must give the original's bytes
    (Arrow names list items `item`, Parquet readers `element`; chunking differs too)."""
    from prefdata.schemas.writers import read_as_built

    write_parquet_atomic(hh_table, tmp_path / "a.parquet")
    back = read_as_built(tmp_path / "a.parquet")
    assert back.schema.equals(hh_table.schema, check_metadata=True) and back.equals(hh_table)
    write_parquet_atomic(pa.concat_tables([back.slice(0, 1), back.slice(1)]), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_disk_full_is_an_output_error_and_keeps_the_old_file(hh_table, tmp_path, monkeypatch):
    import errno

    from prefdata.schemas.writers import OutputError

    target = tmp_path / "t.parquet"
    write_parquet_atomic(hh_table, target)
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OutputError, match=r"t.parquet: cannot write, no space left"):
        write_parquet_atomic(hh_table, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
