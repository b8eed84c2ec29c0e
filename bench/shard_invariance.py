"""Shard-count invariance of a real recipe: the same build at several `[output] shard_size`s.

    python bench/shard_invariance.py [--recipe examples/curate_hh.toml] [--limit 400] [--shard-sizes 400 50]
                                     [--out out/shard_invariance] [--executor local] [--compare-only]

Runs `prefdata build RECIPE --limit N --no-cache --set output.shard_size=S` once per size (fresh, no
request cache, each in its own process), then compares every build with the first, rows in id
order: the tables column by column (equal, or the largest absolute and relative difference of a
numeric column), the rejects (stage, row id, reason), each whole-input stage's fitted state and
the flip-rate estimate. Prints a report and exits 1 when ids, texts or any decision (bucket,
flip, a kept/dropped row, a reject) differ between the builds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO  # noqa: I001 - puts the repository on sys.path first

DECISIONS = ("id", "prompt", "chosen", "rejected", "bucket", "flipped")


def build(recipe: str, limit: int, shard_size: int, out: Path, executor: str) -> float:
    cmd = [str(Path(sys.executable).parent / "prefdata"), "build", recipe, "--limit", str(limit), "--no-cache", "-q", "--overwrite",
           "-o", str(out), "--set", f"output.shard_size={shard_size}", "--executor", executor]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def load(out: Path):
    import pyarrow.parquet as pq

    from prefdata.schemas.writers import load_dataset_dir, sort_by_id

    table = sort_by_id(load_dataset_dir(out).data.table)
    rejects = sorted((r["stage"], r["row_id"], r["reason"]) for r in pq.read_table(out / "rejects.parquet").to_pylist())
    return table, rejects, json.loads((out / "stats.json").read_text())


def column_difference(a, b) -> str:
    import numpy as np
    import pyarrow as pa

    if a.equals(b):
        return "identical"
    kind = a.type.value_type if pa.types.is_list(a.type) else a.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return "DIFFERS"
    def floats(column) -> np.ndarray:  # nulls as NaN; a list column as a [rows, length] matrix
        def nan(v):
            return np.nan if v is None else v
        return np.array([[nan(v) for v in row] if isinstance(row, list) else nan(row) for row in column.to_pylist()],
                        dtype=float)

    try:
        x, y = floats(a), floats(b)
    except ValueError:  # ragged lists, or rows of different lengths in the two builds
        return "DIFFERS (shape)"
    diff = np.abs(x - y)
    rel = diff / np.maximum(np.abs(x), 1e-12)
    return f"max abs diff {np.nanmax(diff):.3g}, max rel diff {np.nanmax(rel):.3g}"


def compare(first: Path, other: Path) -> bool:
    (ta, ja, sa), (tb, jb, sb) = load(first), load(other)
    same = ta.num_rows == tb.num_rows and ja == jb
    print(f"\n{other.name} vs {first.name}: rows {tb.num_rows} / {ta.num_rows}, shards {sb['output']['shards']} / "
          f"{sa['output']['shards']}, rejects {'equal' if ja == jb else 'DIFFER'} ({len(ja)})")
    if ta.num_rows != tb.num_rows or ta.column_names != tb.column_names:
        print("  tables differ in shape or columns")
        return False
    for name in ta.column_names:
        verdict = column_difference(ta.column(name), tb.column(name))
        print(f"  {name}: {verdict}")
        if name in DECISIONS and verdict != "identical":
            same = False
    for stage_a, stage_b in zip(sa["stages"], sb["stages"]):
        if "fit" in stage_a:
            equal = stage_a["fit"].get("state") == stage_b.get("fit", {}).get("state")
            print(f"  fit {stage_a['name']}: {'identical' if equal else 'differs'}")
        if (stage_a["rows_out"], stage_a["drops"]) != (stage_b["rows_out"], stage_b["drops"]):
            print(f"  stage {stage_a['name']} keeps/drops differ: {stage_a['drops']} vs {stage_b['drops']}")
            same = False
    fa, fb = sa.get("estimates", {}).get("flip_rate"), sb.get("estimates", {}).get("flip_rate")
    if fa:
        print(f"  flip_rate {fa['method']} {fa['epsilon']:.6g} {fa['interval']} | {fb['method']} {fb['epsilon']:.6g} {fb['interval']}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="examples/curate_hh.toml")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[400, 50])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "shard_invariance")
    parser.add_argument("--executor", default="local")
    parser.add_argument("--compare-only", action="store_true", help="compare the builds already under --out")
    args = parser.parse_args()
    outs = []
    for size in args.shard_sizes:
        out = args.out / f"shard_size_{size}"
        if not args.compare_only:
            seconds = build(args.recipe, args.limit, size, out, args.executor)
            print(f"shard_size {size}: built in {seconds:.0f} s -> {out}", flush=True)
        outs.append(out)
    same = all([compare(outs[0], other) for other in outs[1:]])
    print("\nsame ids, texts, decisions and rejects" if same else "\nbuilds DIFFER in ids, texts, decisions or rejects")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
