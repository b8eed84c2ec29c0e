"""Curation at scale: synthetic pairs through dedup -> noise -> voting -> ches_filter, local vs Ray.

    python bench/curate_scale.py                         # 1M pairs, 16 shards, local then Ray
    python bench/curate_scale.py --rows 100000 --executors local

The pairs are made in memory (short texts, 5 precomputed member margins, precomputed ches/ln_ches,
prompt vectors from a seeded generator: `--dim`-dimensional unit vectors, 2% planted near copies
and 1% planted exact prompt copies) and handed to the real executor (`prefdata.pipeline.executor`),
as `prefdata build` does after reading its source: they are written to one Parquet file first and
each executor runs in its own process that reads it, so `peak_rss_mib` (ru_maxrss) is that build
process's own (for Ray: the driver; the actors are other
processes); `peak_private_mib` / `peak_shared_mib` split it into private pages and shared-memory
pages (Ray's object store). dedup reads the given vectors (`embedding_column`), so no encoder runs; with more than
`exact_scan_max` prompts its near-duplicate search is the ANN index. Stage checkpoints are off
(`--checkpoints` turns them on): the run identity of every shard hashes its rows.

`--stream` hands the executor the source shard by shard (Parquet batches of `shard_size` rows), as a
build with `[source] streaming = true` does, instead of the table read whole: the local executor
still gathers every shard at the first whole-input stage, the Ray driver holds one at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import REPO  # noqa: F401  (puts the repository on sys.path)

STAGES = [
    {"type": "dedup", "embedding_column": "embedding", "near_threshold": 0.95},
    {"type": "noise", "bootstrap": 10},
    {"type": "voting"},
    {"type": "ches_filter", "share": 0.05},
]


def _chat(role: str, texts: list[str]) -> pa.Array:
    messages = pa.StructArray.from_arrays([pa.array([role] * len(texts)), pa.array(texts)], names=["role", "content"])
    return pa.ListArray.from_arrays(pa.array(np.arange(len(texts) + 1, dtype=np.int32)), messages)


def synthetic_pairs(rows: int, dim: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    near = np.sort(rng.choice(np.arange(1, rows), size=rows // 50, replace=False))
    sources = (rng.random(len(near)) * near).astype(np.int64)
    noisy = vectors[sources] + 0.02 * rng.standard_normal((len(near), dim), dtype=np.float32)
    vectors[near] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    texts = [f"question {i} about topic {i % 997}" for i in range(rows)]
    for i in rng.choice(np.arange(1, rows), size=rows // 100, replace=False):
        texts[i] = texts[int(rng.integers(0, i))].upper()
    truth = rng.random(rows) < 0.85  # the label is right for 85% of pairs
    centre = np.where(truth, 1.0, -1.0)[:, None]
    margins = (centre + rng.standard_normal((rows, 5))).round(4)
    ches = rng.standard_normal(rows)
    ids = [f"{(i * 2654435761) % 4294967296:010d}-{i}" for i in range(rows)]
    return pa.table({
        "id": ids,
        "prompt_id": [f"p{i}" for i in range(rows)],
        "prompt": _chat("user", texts),
        "chosen": _chat("assistant", [f"answer a{i}" for i in range(rows)]),
        "rejected": _chat("assistant", [f"answer b{i}" for i in range(rows)]),
        "chosen_score": pa.array(margins.mean(axis=1) / 2),
        "rejected_score": pa.array(-margins.mean(axis=1) / 2),
        "margin": pa.array(margins.mean(axis=1)),
        "member_margins": pa.FixedSizeListArray.from_arrays(pa.array(margins.reshape(-1)), 5).cast(pa.list_(pa.float64())),
        "ches": pa.array(ches * 100),
        "ln_ches": pa.array(ches),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    })


class MemorySplit:
    """Peaks of this process's private (RssAnon) and shared-memory (RssShmem) resident pages, sampled
    every 50 ms: Ray's object store is shared memory, and the pages a driver writes or reads there
    count in its ru_maxrss although the store, not the driver, owns them."""

    def __init__(self) -> None:
        import threading

        self.peak = {"RssAnon": 0, "RssShmem": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with open("/proc/self/status") as status:
                for line in status:
                    key = line.split(":")[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]) // 1024)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_private_mib": self.peak["RssAnon"], "peak_shared_mib": self.peak["RssShmem"]}


def run_one(executor: str, source: Path, shards: int, checkpoints: bool, stream: bool) -> dict:
    import pyarrow.parquet as pq

    memory = MemorySplit()

    from prefdata.builder import job_for, make_executor
    from prefdata.pipeline.stage import check_chain
    from prefdata.recipe import parse_recipe
    from prefdata.registry import make_stage

    parquet = pq.ParquetFile(source)
    rows, dim = parquet.metadata.num_rows, parquet.schema_arrow.field("embedding").type.list_size
    shard_size = -(-rows // shards)
    # as `prefdata build` reads a Parquet source: whole, or (streamed) one shard at a time
    table = None if stream else pq.read_table(source)
    streamed = {"shards": (pa.Table.from_batches([b]) for b in parquet.iter_batches(batch_size=shard_size)),
                "input_rows": rows} if stream else {}
    data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        recipe = parse_recipe({"name": "curate_scale", "source": {"path": "synthetic", "kind": "pairs"}, "stages": STAGES,
                               "executor": {"kind": executor, "local_num_cpus": 2},
                               "output": {"dir": str(out), "shard_size": shard_size, "checkpoints": checkpoints}})
        stages = [make_stage(config) for config in recipe.stages]
        check_chain(stages, parquet.schema_arrow.names)
        start = time.perf_counter()
        job = job_for(recipe, table, stages, out, use_cache=False, **streamed)
        result = make_executor(recipe.executor).run(job).result
        seconds = time.perf_counter() - start
    return {"executor": executor, "stream": stream, "rows": rows, "shards": len(result.shards), "dim": dim, "rows_out": result.rows,
            "drops": {s.name: dict(s.drops) for s in result.stats},
            "fit_seconds": {s.name: s.fit.get("seconds") for s in result.stats},
            "wall_s": round(seconds, 1), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "data_rss_mib": round(data_rss), **memory.stop()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64, help="prompt vector size (64 keeps 1M vectors at 256 MB)")
    parser.add_argument("--executors", nargs="+", default=["local", "ray"])
    parser.add_argument("--checkpoints", action="store_true")
    parser.add_argument("--stream", action="store_true", help="hand the executor the source shard by shard")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.source), args.shards, args.checkpoints, args.stream)))
        return
    import pyarrow.parquet as pq

    results = []
    scratch = tempfile.TemporaryDirectory(prefix="curate-scale-source-")
    source = Path(scratch.name) / "pairs.parquet"
    pq.write_table(synthetic_pairs(args.rows, args.dim), source)  # made here, read by each build process
    for executor in args.executors:
        cmd = [sys.executable, __file__, "--one", executor, "--source", str(source), "--shards", str(args.shards)]
        cmd += ["--checkpoints"] * args.checkpoints + ["--stream"] * args.stream
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else None
        print(line or proc.stderr[-3000:], flush=True)
        if line:
            results.append(json.loads(line))
    if len(results) == 2:
        print(f"ray / local wall: {results[1]['wall_s'] / results[0]['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
