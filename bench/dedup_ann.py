"""Near-duplicate search at scale: faiss-cpu IVF vs faiss-cpu and usearch HNSW, recall of planted duplicates, time, peak RSS.

    python bench/dedup_ann.py                      # 100k vectors, the three indexes, then prefdata's dedup at 100k
    python bench/dedup_ann.py --sizes 100000 1000000 --libraries usearch

Synthetic clustered unit vectors (384-d, like MiniLM): n/100 cluster centres, members at cosine ~0.74
of each other (related, not duplicates), and 2% planted near duplicates, each a copy of an earlier
vector with noise (cosine ~0.99). Each configuration runs in its own process, so its peak RSS
(ru_maxrss) is its own. `knn` rows time the library alone (build + k=16 search of every vector);
`dedup` rows time `prefdata.filters.dedup.near_duplicates_ann` (index, exact verification, the greedy
rule). Recall = share of planted duplicates flagged; `extra` = flagged vectors that were not
planted (each verified >= the threshold by exact cosine, so accidental true duplicates).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from _common import REPO  # noqa: F401  (puts the repository on sys.path)

DIM, THRESHOLD, K = 384, 0.95, 16


def dataset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, 384] float32 unit, planted [n] bool: row is a near copy of an earlier row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    planted = np.zeros(n, dtype=bool)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)]
        block = block + 0.6 * rng.standard_normal(block.shape, dtype=np.float32) / np.sqrt(DIM)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    copies = np.sort(rng.choice(np.arange(1, n), size=n // 50, replace=False))
    for row in copies:
        source = int(rng.integers(0, row))
        v = out[source] + 0.15 * rng.standard_normal(DIM, dtype=np.float32) / np.sqrt(DIM)
        out[row] = v / np.linalg.norm(v)
        planted[row] = True
    return out, planted


def run_one(library: str, n: int) -> dict:
    vectors, planted = dataset(n)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if library == "faiss-ivf":  # what prefdata's dedup uses (prefdata.filters.dedup.knn)
        from prefdata.filters.dedup import knn

        built = start  # train + add + search are one call; reported as search
        neighbours = knn(vectors, K).astype(np.int64)
        searched = time.perf_counter()
        sims = np.concatenate([np.einsum("nd,nkd->nk", vectors[i : i + 4096], vectors[np.maximum(neighbours[i : i + 4096], 0)])
                               for i in range(0, n, 4096)])  # the index's scores are dropped by knn: recompute
    elif library == "faiss":
        import faiss

        faiss.omp_set_num_threads(2)
        index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128
        index.add(vectors)
        built = time.perf_counter()
        index.hnsw.efSearch = 64
        sims, neighbours = index.search(vectors, K)
    elif library == "usearch":
        from usearch.index import Index

        index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
        index.add(np.arange(n, dtype=np.uint64), vectors, log=False)
        built = time.perf_counter()
        matches = index.search(vectors, K, log=False)
        neighbours, sims = np.asarray(matches.keys, dtype=np.int64), 1 - np.asarray(matches.distances)
    else:  # prefdata's dedup path: index + exact verification + greedy
        from prefdata.filters.dedup import near_duplicates_ann

        found = near_duplicates_ann(vectors, THRESHOLD, K)
        seconds = time.perf_counter() - start
        flagged = np.zeros(n, dtype=bool)
        flagged[list(found)] = True
        return {"what": "dedup", "library": "faiss-ivf", "n": n, "seconds": round(seconds, 1),
                "recall": round(float(flagged[planted].mean()), 4), "extra": int((flagged & ~planted).sum()),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "data_rss_mib": round(rss_data)}
    seconds = (searched if library == "faiss-ivf" else time.perf_counter()) - start
    rows = np.arange(n)[:, None]
    hit = ((neighbours < rows) & (neighbours >= 0) & (sims >= THRESHOLD)).any(axis=1)
    return {"what": "knn", "library": library, "n": n, "build_s": round(built - start, 1),
            "search_s": round(seconds - (built - start), 1), "seconds": round(seconds, 1),
            "recall": round(float(hit[planted].mean()), 4),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "data_rss_mib": round(rss_data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--libraries", nargs="*", default=["faiss-ivf", "faiss", "usearch"], help="kNN timings of these libraries (none: only the dedup rows)")
    parser.add_argument("--dedup-sizes", type=int, nargs="*", default=None, help="sizes for prefdata's dedup (default: --sizes)")
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    jobs = [(lib, n) for n in args.sizes for lib in args.libraries]
    jobs += [("dedup", n) for n in (args.sizes if args.dedup_sizes is None else args.dedup_sizes)]
    for what, n in jobs:
        proc = subprocess.run([sys.executable, __file__, "--one", what, str(n)], capture_output=True, text=True)
        print(proc.stdout.strip() or proc.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
