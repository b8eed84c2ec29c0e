"""Whole-input stages (map -> fit -> apply): the dataset does not depend on the shard count or the
executor, a build killed between fit and apply reuses the fit, and the fit sees only its columns.

The fixture is an in-memory pair table with precomputed member margins, CHES scores and prompt
vectors (planted exact and near duplicates, prompts of several pairs spanning shard borders), run
through the real executors (`prefdata.pipeline.executor`) with dedup, noise, voting and ches_filter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefdata.builder import job_for, make_executor
from prefdata.pipeline.checkpoint import CHECKPOINT_DIR
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.pipeline.stage import ChainError, WholeInputStage, check_chain
from prefdata.recipe import parse_recipe
from prefdata.registry import make_stage
from prefdata.schemas.writers import load_dataset_dir

from ..conftest import REPO

ROWS = 192
DIM = 32
STAGES = [
    {"type": "dedup", "embedding_column": "embedding", "near_threshold": 0.95},
    {"type": "noise", "bootstrap": 10},
    {"type": "voting", "incorrect_quantile": 0.2, "ambiguous_quantile": 0.4},
    {"type": "ches_filter", "share": 0.1},
]


def fixture_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    """Pairs with 5 member margins (some null), ches/ln_ches (some null), unit prompt vectors; rows
    3k+1 share the prompt of row 3k; every 10th prompt is an exact copy of an earlier one (other
    case and spacing), every 7th a near copy of an earlier vector (cosine ~0.99)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"question number {i} about topic {i % 13}" for i in range(rows)]
    prompt_ids = [f"q{i:04d}" for i in range(rows)]
    for i in range(rows):
        if i % 3 == 1:
            prompt_ids[i], texts[i], vectors[i] = prompt_ids[i - 1], texts[i - 1], vectors[i - 1]
        elif i % 10 == 0 and i:
            texts[i] = texts[i // 2].upper() + "  "
        elif i % 7 == 0 and i:
            v = vectors[i // 3] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
            vectors[i] = v / np.linalg.norm(v)
    margins = rng.normal(0.5, 1.0, (rows, 5)).round(3)
    ches = rng.normal(0, 1, rows)
    records = []
    for i in range(rows):
        member = [None if (i + m) % 17 == 0 else float(margins[i, m]) for m in range(5)]
        records.append({
            "id": f"r{(i * 7919) % 1000:04d}-{i}",  # ids out of input order: output files are sorted by id
            "prompt_id": prompt_ids[i],
            "prompt": [{"role": "user", "content": texts[i]}],
            "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad answer {i}"}],
            "chosen_score": float(i), "rejected_score": float(-i), "margin": float(2 * i),
            "member_margins": [None] * 5 if i % 29 == 5 else member,
            "ches": None if i % 23 == 3 else float(ches[i]),
            "ln_ches": None if i % 23 == 3 else float(ches[i] / 10 + (0.5 if i % 11 == 0 else 0.0)),
            "embedding": vectors[i].tolist(),
        })
    schema = pa.schema([("embedding", pa.list_(pa.float32(), DIM))])
    table = pa.Table.from_pylist(records)
    return table.set_column(table.schema.get_field_index("embedding"), schema.field("embedding"),
                            table.column("embedding").cast(schema.field("embedding").type))


def run(table: pa.Table, out: Path, shard_size: int, stages=STAGES, executor: str = "local", **output):
    recipe = parse_recipe({"name": "whole", "seed": 3, "source": {"path": "unused.jsonl", "kind": "pairs"},
                           "stages": stages, "executor": {"kind": executor, "local_num_cpus": 2},
                           "output": {"dir": str(out), "shard_size": shard_size, **output}})
    built = [make_stage(config) for config in recipe.stages]
    check_chain(built, table.column_names)
    out.mkdir(parents=True, exist_ok=True)
    job = job_for(recipe, table, built, out, use_cache=False)
    return make_executor(recipe.executor).run(job).result


def dataset(out: Path) -> pa.Table:
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("*.parquet"))])
    return table.sort_by("id")


def rejects(result) -> list[tuple]:
    return sorted((r.stage, r.row_id, r.reason.value, r.detail) for r in result.rejects)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "one-shard"
    return out, run(fixture_table(), out, ROWS)


@pytest.mark.parametrize("shard_size", [ROWS // 4, ROWS // 16])
def test_shard_count_does_not_change_the_dataset(reference, tmp_path, shard_size):
    ref_out, ref = reference
    result = run(fixture_table(), tmp_path / "out", shard_size)
    assert len(result.shards) == -(-ROWS // shard_size)
    assert dataset(tmp_path / "out").equals(dataset(ref_out))  # every column, every value
    assert rejects(result) == rejects(ref)
    for mine, theirs in zip(result.stats, ref.stats):
        assert (mine.rows_in, mine.rows_out, dict(mine.drops)) == (theirs.rows_in, theirs.rows_out, dict(theirs.drops))
        assert mine.fit["state"] == theirs.fit["state"] and mine.rows_in == mine.rows_out + sum(mine.drops.values())
    drops = {s.name: dict(s.drops) for s in ref.stats}
    assert drops["dedup"]["exact_duplicate"] and drops["dedup"]["near_duplicate"]  # the fixture plants both
    assert drops["voting"]["ambiguous_preference"] and drops["ches_filter"]["ches_high"]


def test_each_whole_input_stage_alone_is_shard_invariant(tmp_path):
    table = fixture_table()
    for config in STAGES:
        one = run(table, tmp_path / f"{config['type']}-1", ROWS, [config])
        many = run(table, tmp_path / f"{config['type']}-16", ROWS // 16, [config])
        assert dataset(tmp_path / f"{config['type']}-16").equals(dataset(tmp_path / f"{config['type']}-1")), config
        assert rejects(many) == rejects(one)


def test_voting_buckets_are_the_hand_computed_global_quantiles(tmp_path):
    table = fixture_table()
    config = {"type": "voting", "decide": {"incorrect": "keep", "ambiguous": "keep"}}
    run(table, tmp_path / "out", ROWS // 8, [config])
    rows = {r["id"]: r for r in dataset(tmp_path / "out").to_pylist()}
    scored = []
    for r in table.to_pylist():
        values = [v for v in r["member_margins"] if v is not None]
        if values:
            scored.append((float(np.mean(values)), r["id"]))
    scored.sort()
    n = len(scored)
    expected = {ident: "incorrect" if rank < int(0.2 * n) else "ambiguous" if rank < int(0.4 * n) else "normal"
                for rank, (_, ident) in enumerate(scored)}
    assert {i: rows[i]["bucket"] for i in expected} == expected
    assert sum(r["bucket"] is None for r in rows.values()) == ROWS - n
    # per shard, the same rows would have been bucketed differently: the test can fail
    per_shard = run(table, tmp_path / "per-shard", ROWS // 8, [{**config, "per_shard": True}])
    assert per_shard.stats[0].counters["voting_tables"] == 8
    assert {r["id"]: r["bucket"] for r in dataset(tmp_path / "per-shard").to_pylist()} != {i: rows[i]["bucket"] for i in rows}


def test_fit_sees_only_its_declared_columns():
    seen = {}

    class Spy(WholeInputStage):
        name = "spy"
        fit_columns = ("id", "ches")

        def fit(self, view, ctx):
            seen["columns"] = view.column_names
            return {"rows": view.num_rows}

        def apply(self, table, fitted, ctx):
            from prefdata.pipeline.stage import StageOutput

            return StageOutput(table)

    from pydantic import BaseModel

    class SpyConfig(BaseModel):
        type: str = "spy"

    stage = Spy(SpyConfig())
    stage.run(fixture_table(8), BuildContext(engines=EnginePool({})))
    assert seen["columns"] == ["id", "ches"]
    stage.fit_columns = ("id", "nope")
    with pytest.raises(ChainError, match=r"fits on \['nope'\]"):
        check_chain([stage], fixture_table(8).column_names)


def test_fitted_state_is_in_stats_and_checkpointed(reference):
    out, result = reference
    by_name = {s.name: s for s in result.stats}
    assert by_name["voting"].fit["state"]["rows"] > 0 and by_name["voting"].fit["rows"] == by_name["voting"].rows_in
    assert by_name["dedup"].fit["state"]["dropped_prompts"]["exact_duplicate"] > 0
    assert by_name["noise"].fit["state"]["mixture"]["epsilon"] >= 0
    fits = sorted(p.parent.name for p in (out / CHECKPOINT_DIR).rglob("fit-*.json"))
    assert fits == ["00-dedup", "01-noise", "02-voting", "03-ches_filter"]


SCRIPT = """
import sys
from pathlib import Path
from tests.pipeline.test_whole_input import fixture_table, run
run(fixture_table(), Path(sys.argv[1]), {shard_size})
"""


def test_build_killed_between_fit_and_apply_reuses_the_fit(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "out"
    script = tmp_path / "build.py"
    script.write_text(SCRIPT.format(shard_size=ROWS // 4))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFDATA_KILL_AT": "fit_done:2"}  # after the noise fit
    killed = subprocess.run([sys.executable, str(script), str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    fit_file = next((out / CHECKPOINT_DIR / "01-noise").glob("fit-*.json"))
    before = (fit_file.stat().st_mtime_ns, json.loads(fit_file.read_text()))
    assert not list((out / CHECKPOINT_DIR / "01-noise").glob("shard-*.json"))  # no apply ran
    env.pop("PREFDATA_KILL_AT")
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (fit_file.stat().st_mtime_ns, json.loads(fit_file.read_text())) == before  # reused, not refitted
    assert dataset(out).equals(dataset(ref_out))


def test_ray_executor_equals_local_with_four_shards(reference, tmp_path):
    ref_out, ref = reference
    result = run(fixture_table(), tmp_path / "ray", ROWS // 4, executor="ray")
    assert len(result.shards) == 4
    assert dataset(tmp_path / "ray").equals(dataset(ref_out))
    assert rejects(result) == rejects(ref)
    assert [s.fit["state"] for s in result.stats] == [s.fit["state"] for s in ref.stats]


def test_dataset_loads(reference):
    out, _ = reference
    assert load_dataset_dir(out).num_rows > 0
