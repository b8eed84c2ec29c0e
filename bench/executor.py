"""Executor overhead: wall time of the same build on the local executor and on a local Ray cluster.

    python bench/executor.py [--recipe examples/quickstart.toml] [--prompts 16] [--shard-size 4]
                             [--max-tokens 64] [--backend vllm|transformers] [--ray-cpus 2] [--actor-cpus 2]

Runs the recipe twice on the same input, each into a fresh folder with checkpoints and the request
cache off (nothing is reused): once with `--executor local`, once with `--executor ray` on a Ray
cluster started for the run (`ray.init`, `--ray-cpus` CPUs; its start-up is included, as a user
pays it). Prints both wall times, the ratio ray/local and whether the two datasets are identical.
One run on a shared machine: the ratio is what to compare, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import REPO  # noqa: E402, I001 - puts the repository on sys.path first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default=str(REPO / "examples" / "quickstart.toml"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backend", default=None, help="override the recipe's engine backends")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=2,
                        help="num_cpus per stage actor (Ray sets the actor's torch threads from it)")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from prefdata.builder import run_build
    from prefdata.recipe import load_recipe

    recipe = load_recipe(args.recipe).resolved()
    recipe["source"]["limit"] = args.prompts
    recipe["output"].update(shard_size=args.shard_size, checkpoints=False, cache=False)
    for stage in recipe["stages"]:
        if "sampling" in stage:
            stage["sampling"]["max_tokens"] = args.max_tokens
    if args.backend:
        for engine in recipe["engines"].values():
            engine["backend"] = args.backend
    recipe["executor"] = {"kind": "local", "num_cpus": args.actor_cpus, "local_num_cpus": args.ray_cpus,
                          "local_object_store_mb": 256}

    seconds, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("local", "ray"):
            out = Path(tmp) / kind
            start = time.perf_counter()
            result = run_build(recipe, output=out, executor=kind)
            seconds[kind] = time.perf_counter() - start
            outs[kind] = [pq.read_table(p).to_pylist() for p in sorted((out / "data").glob("*.parquet"))]
            print(f"{kind}: {seconds[kind]:.1f} s, {result.stats['output']['rows']} pairs, "
                  f"engine setup {result.stats['seconds']['engine_setup']:.1f} s", flush=True)
    report = {"prompts": args.prompts, "shard_size": args.shard_size, "max_tokens": args.max_tokens,
              "backend": args.backend or "recipe", "local_s": round(seconds["local"], 1), "ray_s": round(seconds["ray"], 1),
              "ray_over_local": round(seconds["ray"] / seconds["local"], 2), "identical": outs["local"] == outs["ray"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
