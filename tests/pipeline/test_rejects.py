"""The build's reject log: spilled to disk per shard, written in shard order, same bytes as one write."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.pipeline.rejects import RejectLog, write_part
from prefdata.schemas.errors import REJECT_SCHEMA, Reject, rejects_table
from prefdata.schemas.writers import write_parquet_atomic, write_parquet_stream_atomic
from prefdata.types import RejectReason


def rejects(shard: int, count: int, stage: str = "dedup") -> list[Reject]:
    return [Reject(stage, RejectReason.NEAR_DUPLICATE, f"copy of row {i}", row_id=f"s{shard}-{stage}-{i}",
                   payload={"id": f"s{shard}-{i}", "vector": [i * 0.5] * 8}) for i in range(count)]


def test_parts_spill_to_disk_and_come_back_in_shard_then_stage_order(tmp_path):
    log = RejectLog(tmp_path / "spill")
    log.add(rejects(1, 3), shard=1)  # shard 1 finished first (as on Ray)
    log.add(rejects(0, 2, "dedup"), shard=0)
    log.add([], shard=0)  # nothing rejected: no part
    log.add(rejects(0, 1, "voting"), shard=0)
    assert len(log) == 6 and len(list((tmp_path / "spill").glob("*.parquet"))) == 3  # on disk, not in memory
    assert [r.row_id for r in log] == ["s0-dedup-0", "s0-dedup-1", "s0-voting-0", "s1-dedup-0", "s1-dedup-1",
                                       "s1-dedup-2"]
    log.write(tmp_path / "rejects.parquet", before=rejects(9, 1, "read"))
    written = pq.read_table(tmp_path / "rejects.parquet")
    assert written.schema.equals(REJECT_SCHEMA) and written.column("row_id").to_pylist()[:2] == ["s9-read-0", "s0-dedup-0"]
    assert written.column("payload").to_pylist()[1] == '{"id": "s0-0", "vector": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}'
    log.close()
    assert not (tmp_path / "spill").exists()


def test_parts_written_elsewhere_join_by_their_stage_position(tmp_path):
    """Ray: actors write their stage's part (`write_part`, named by shard and stage position), the driver
    adopts them as they are reported and adds resumed stages' rejects itself; the log orders them by
    (shard, position) whatever the order they arrived in, and a retried stage's part replaces its first."""
    log = RejectLog(tmp_path / "spill")
    write_part(log.folder, rejects_table(rejects(1, 9, "voting")), shard=1, order=2)  # a killed attempt's part ...
    part = write_part(log.folder, rejects_table(rejects(1, 2, "voting")), shard=1, order=2)  # ... and its retry's
    log.adopt(1, 2, part, 2)
    log.add(rejects(1, 1, "dedup"), shard=1, order=0)  # resumed from its checkpoint by the driver
    log.adopt(0, 1, write_part(log.folder, rejects_table(rejects(0, 1, "noise")), shard=0, order=1), 1)
    assert len(log) == 4 and len(list(log.folder.iterdir())) == 3  # no partial file left behind
    assert [r.row_id for r in log] == ["s0-noise-0", "s1-dedup-0", "s1-voting-0", "s1-voting-1"]


def test_a_new_log_clears_a_killed_builds_parts(tmp_path):
    RejectLog(tmp_path / "spill").add(rejects(0, 2), shard=0)
    again = RejectLog(tmp_path / "spill")
    assert len(again) == 0 and list(again) == [] and not list((tmp_path / "spill").iterdir())


def test_streamed_write_has_the_bytes_of_one_write_of_all_rows(tmp_path):
    parts = [rejects_table(rejects(shard, count)) for shard, count in enumerate([5000, 1, 9000, 0, 4000])]
    write_parquet_atomic(pa.concat_tables(parts), tmp_path / "one.parquet")
    rows = write_parquet_stream_atomic(iter(parts), REJECT_SCHEMA, tmp_path / "streamed.parquet")
    assert rows == 18001 and pq.ParquetFile(tmp_path / "streamed.parquet").metadata.num_row_groups == 3
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()


def test_no_rejects_still_writes_an_empty_file_with_the_schema(tmp_path):
    assert RejectLog().write(tmp_path / "rejects.parquet") == 0
    assert pq.read_table(tmp_path / "rejects.parquet").schema.equals(REJECT_SCHEMA)
