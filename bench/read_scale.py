"""Reading an input larger than memory: N synthetic pair rows (about 1 KB each) in Parquet through a
no-op build (read, validate, write), streamed shard by shard. Reports peak RSS and rows/s of the
build process, for the streamed read and, with --compare, for the whole-table read of the same file.

    python bench/read_scale.py                      # 5M rows, ~5 GB of Parquet in /tmp (written first, reused)
    python bench/read_scale.py --rows 500000 --compare

Each build runs in a fresh child process (`--child`), so its peak RSS (ru_maxrss) is the build's
alone: interpreter, imports, the shards in flight. Goal: < 1.5 GiB and >= 50k rows/s for 5M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when what if so no out up into can more "
         "reward model preference pair chosen rejected prompt answer question data train align policy").split()


def write_input(path: Path, rows: int, batch: int = 100_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    # ~64 MB of words: rows are slices of it at random offsets
    text = " ".join(rng.choices(WORDS, k=12_000_000))
    tmp = path.with_suffix(".partial")
    writer = None
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        offsets = [rng.randrange(0, len(text) - 1200) for _ in range(n)]
        table = pa.table({
            "id": [f"row-{i}" for i in range(start, start + n)],
            "prompt": [f"{i}: " + text[o:o + 500] for i, o in zip(range(start, start + n), offsets)],
            "chosen": [text[o + 500:o + 760] for o in offsets],
            "rejected": [text[o + 760:o + 1000] for o in offsets],
            "chosen_score": [rng.random() for _ in range(n)],
            "rejected_score": [rng.random() for _ in range(n)],
        })
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="none")  # ~1 KB a row on disk, as the goal assumes
        writer.write_table(table, row_group_size=20_000)
    assert writer is not None
    writer.close()
    tmp.rename(path)


def child(path: Path, out: Path, streaming: bool, shard_size: int) -> None:
    from prefdata.builder import run_build

    recipe = {"name": "read_scale", "source": {"path": str(path), "kind": "pairs", "streaming": streaming,
                                                "columns": {"chosen_score": "chosen_score", "rejected_score": "rejected_score"}},
              "output": {"dir": str(out), "shard_size": shard_size, "cache": False}}
    started = time.perf_counter()
    result = run_build(recipe)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": result.stats["output"]["rows"], "seconds": seconds, "peak_rss_gib": peak_kib / 1024**2,
                      "streamed": bool(result.stats["source"].get("streamed"))}))


def run(path: Path, out: Path, streaming: bool, shard_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", "--input", str(path), "--out", str(out),
                           "--shard-size", str(shard_size)] + (["--streaming"] if streaming else []),
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/prefdata_read_scale"))
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--compare", action="store_true", help="Also build from the whole table (not streamed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.input, args.out, args.streaming, args.shard_size)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"pairs-{args.rows}.parquet"
    if not path.exists():
        started = time.perf_counter()
        write_input(path, args.rows)
        print(f"wrote {path} ({path.stat().st_size / 1024**3:.2f} GiB) in {time.perf_counter() - started:.0f}s")
    size = path.stat().st_size / 1024**3
    modes = [True, False] if args.compare else [True]
    print("| read | rows | Parquet GiB | shard size | seconds | rows/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for streaming in modes:
        r = run(path, args.dir / "out", streaming, args.shard_size)
        assert r["rows"] == args.rows and r["streamed"] == streaming, r
        print(f"| {'streamed' if streaming else 'whole table'} | {r['rows']} | {size:.2f} | {args.shard_size} | "
              f"{r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | {r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
