"""Kill -9 a real build at named points, run it again, and get the uninterrupted run's bytes.

Each build runs in a subprocess with the embedded SmolLM2 (transformers, float32: the fast CPU
engine; one test uses vLLM, the quickstart's engine). `PREFDATA_KILL_AT` makes the process
SIGKILL itself at a named point (`prefdata.faults`). One uninterrupted reference run
is shared by every kill point.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefdata.pipeline.checkpoint import CHECKPOINT_DIR
from prefdata.schemas.writers import TEMP_MARKER

from ..conftest import FIXTURES, REPO

RECIPE = """
name = "resume"
seed = 7
[source]
path = "{source}"
limit = 2
[engines.policy]
backend = "{backend}"
dtype = "float32"
batch_size = 8
kv_cache_gib = 1
max_model_len = 512
[[stages]]
type = "on_policy"
n = 2
[stages.sampling]
temperature = 1.0
max_tokens = 8
[stages.scorer]
type = "judge"
system_prompt = "Rate 1 to 10."
template = "{{conversation}} {{response}}"
[[stages]]
type = "reference_logps"
[output]
shard_size = 1
"""


def build(tmp: Path, out: Path, backend: str = "transformers", kill_at: str | None = None, extra: tuple = ()):
    """`prefdata build` in its own process group; a killed build's whole group is killed, as a
    preempted job's would be (vLLM's engine-core children would otherwise outlive it)."""
    recipe = tmp / f"recipe-{backend}.toml"
    recipe.write_text(RECIPE.format(source=FIXTURES / "prompts_small.jsonl", backend=backend))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFDATA_KILL_AT", None)
    if kill_at:
        env["PREFDATA_KILL_AT"] = kill_at
    log = tmp / f"build-{out.name}-{kill_at or 'full'}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "prefdata", "build", str(recipe), "-o", str(out), "-q", *extra],
                                cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, returncode, stdout="", stderr=log.read_text()[-3000:])


def output_bytes(out: Path) -> dict[str, bytes]:
    files = sorted((out / "data").glob("*.parquet")) + [out / "rejects.parquet"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(f"*{TEMP_MARKER}*")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    done = build(tmp, tmp / "out")
    assert done.returncode == 0, done.stderr
    data = output_bytes(tmp / "out")
    assert len(data) == 3 and sum(pq.read_metadata(tmp / "out" / name).num_rows for name in data if "data/" in name) > 0
    return data


@pytest.mark.parametrize("kill_at", [
    "engine_chunk:4",   # during generation: shard 1's samples are cached, its judging not done
    "parquet_write:5",  # shard 0's data file half written under its temporary name
    "stage_done:3",     # between stages: shard 1's on_policy checkpoint committed, reference_logps not run
])
def test_killed_build_resumes_to_identical_output(reference, tmp_path, kill_at):
    out = tmp_path / "out"
    killed = build(tmp_path, out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if kill_at.startswith("parquet_write"):
        assert [p.name for p in temp_files(out)] == [f".train-00000.parquet{TEMP_MARKER}{p.name.rsplit('-', 1)[1]}"
                                                     for p in temp_files(out)]
        assert not (out / "data" / "train-00000.parquet").exists()
    assert not (out / "stats.json").exists()

    resumed = build(tmp_path, out)
    assert resumed.returncode == 0, resumed.stderr
    assert output_bytes(out) == reference
    assert temp_files(out) == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["resumed"]["stages"] >= 1  # finished work was re-used, not redone
    if kill_at.startswith("engine_chunk"):
        assert stats["request_cache"]["hits"] >= 1  # shard 1's samples came from the cache, not the engine
    assert len(list((out / CHECKPOINT_DIR).rglob("*.json"))) == 4  # 2 shards x 2 stages, nothing stale


@pytest.mark.vllm
def test_vllm_build_killed_during_generation_resumes_identically(tmp_path):
    """The quickstart's engine: reference, killed and resumed runs all on vLLM."""
    reference_out, out = tmp_path / "reference", tmp_path / "out"
    done = build(tmp_path, reference_out, backend="vllm")
    assert done.returncode == 0, done.stderr
    killed = build(tmp_path, out, backend="vllm", kill_at="engine_chunk:4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = build(tmp_path, out, backend="vllm")
    assert resumed.returncode == 0, resumed.stderr
    assert output_bytes(out) == output_bytes(reference_out)
    assert temp_files(out) == []
