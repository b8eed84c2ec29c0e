"""Generation throughput: prefdata's engines next to bare vLLM and bare transformers, same prompts.

    python bench/generate.py [--prompts 32] [--n 4] [--max-tokens 128] [--kv-cache-gib 1] [--skip-transformers]

Prints tokens/s of generated tokens for each path, and the ratios to bare vLLM, from one run
(this machine is noisy: compare ratios within a run, not numbers across runs). The two vLLM
paths run interleaved and then in reverse order, each from an empty prefix cache: prefdata's engine
called directly; the same engine as a build calls it (behind the request cache, a fresh SQLite
store each time, so its writes are paid and nothing is a hit; one call, or calls of `--chunk`
prompts); bare `LLM.generate` with exactly the requests prefdata sends (n samples as n requests
with derived seeds); bare `LLM.generate` with n samples per request and no seed. All paths use the
embedded SmolLM2-135M-Instruct in one dtype (`--dtype`) and the same chat-templated prompts. With a
`--kv-cache-gib` smaller than one call's samples need, prefdata's stream admits requests as their
whole KV need fits (never preempting) where bare vLLM admits on the prompt alone and preempts.
"""

from __future__ import annotations

import argparse
import json

from _common import DATA, timed  # noqa: E402, I001 - puts the repository on sys.path first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32, help="OASST prompts (over --chunk: several engine calls in a build)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=None, help="prompts per engine call in a build (default: one call)")
    parser.add_argument("--kv-cache-gib", type=int, default=None, help="vLLM's KV cache (default: the engine's)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16; default: the engines' own (bfloat16 where the "
                        "CPU computes it natively, else float32: `python bench/dtype.py`)")
    args = parser.parse_args()

    import pyarrow as pa

    from prefdata.engines import ChatFormatter, EngineConfig, SamplingParams, load_engine
    from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator
    from prefdata.pipeline.context import BuildContext, EnginePool
    from prefdata.schemas.readers import read_prompts

    prompts = read_prompts(DATA / "oasst_prompt_lottery_150.jsonl", limit=args.prompts).table
    results: dict[str, dict] = {}

    kv = {} if args.kv_cache_gib is None else {"kv_cache_gib": args.kv_cache_gib}
    config = EngineConfig(backend="vllm", dtype=args.dtype, **kv)
    dtype = config.resolved().dtype  # both engines and bare transformers run in it
    engine = load_engine(config)
    formatter = ChatFormatter(engine.tokenizer)
    ids = [formatter.prompt_ids(p) for p in prompts.column("prompt").to_pylist()]
    params = [SamplingParams(n=args.n, temperature=0.8, max_tokens=args.max_tokens, seed=i) for i in range(len(ids))]
    engine.generate(ids[:2], SamplingParams(max_tokens=8))  # warm-up

    from vllm import SamplingParams as VSamplingParams

    bare = engine._llm  # the same loaded LLM, called directly: what the wrapper costs
    vparams = VSamplingParams(n=args.n, temperature=0.8, max_tokens=args.max_tokens, seed=None)

    import shutil
    import tempfile
    from pathlib import Path

    from prefdata.engines.cache import CachedEngine, RequestStore

    seeded = [engine._vllm_params(sample) for p in params for sample in p.per_sample()]  # what prefdata sends
    seeded_prompts = [{"prompt_token_ids": list(ids[i])} for i, p in enumerate(params) for _ in p.per_sample()]
    scratch = Path(tempfile.mkdtemp(prefix="bench-generate-"))

    def count(out: list) -> int:
        return sum(len(c.token_ids) for o in out for c in o)

    def run_prefdata() -> tuple[int, float]:
        out, seconds = timed(lambda: engine.generate(ids, params))
        return count(out), seconds

    def run_in_build() -> tuple[int, float]:
        store = RequestStore(scratch / f"requests-{len(list(scratch.iterdir()))}.sqlite")  # empty: every request runs
        cached = CachedEngine(engine, store, identity={"bench": "generate"}, chunk=args.chunk)
        out, seconds = timed(lambda: cached.generate(ids, params))
        assert store.counts["hits"] == 0 and store.counts["writes"] == len(ids)
        store.close()
        return count(out), seconds

    def run_bare() -> tuple[int, float]:
        bare.reset_prefix_cache()  # as prefdata's engine does before each call: no warm prefixes
        vout, seconds = timed(lambda: bare.generate([{"prompt_token_ids": p} for p in ids], vparams, use_tqdm=False))
        return sum(len(c.token_ids) for o in vout for c in o.outputs), seconds

    def run_bare_seeded() -> tuple[int, float]:
        bare.reset_prefix_cache()
        vout, seconds = timed(lambda: bare.generate(seeded_prompts, seeded, use_tqdm=False))
        return sum(len(c.token_ids) for o in vout for c in o.outputs), seconds

    # Interleaved, then the same in reverse: no path always runs first (or last) on a warm machine.
    paths = {"prefdata vLLM engine.generate": run_prefdata,
             "prefdata engine in a build (request cache; " + (f"calls of {args.chunk} prompts)" if args.chunk else "one call)"): run_in_build,
             "bare vLLM LLM.generate, the same seeded requests": run_bare_seeded,
             "bare vLLM LLM.generate": run_bare}
    order = list(paths) + list(reversed(paths))
    totals = {name: [0, 0.0] for name in paths}
    for name in order:
        tokens, seconds = paths[name]()
        totals[name][0] += tokens
        totals[name][1] += seconds
    for name, (tokens, seconds) in totals.items():
        results[name] = {"tokens": tokens, "seconds": seconds}

    stage = OnPolicyGenerator(OnPolicyConfig(n=args.n, sampling={"max_tokens": args.max_tokens, "temperature": 0.8}))
    pool = EnginePool({})
    pool.put("policy", engine)
    ctx = BuildContext(engines=pool)
    stage.setup(ctx)
    (stage_out, stats), seconds = timed(lambda: stage.run(pa.Table.from_pylist(prompts.to_pylist(), schema=prompts.schema), ctx))
    results["prefdata on_policy stage (generate + judge + pair)"] = {
        "tokens": None, "seconds": seconds, "pairs": stage_out.table.num_rows, "prompts": len(ids)}
    engine.close()
    shutil.rmtree(scratch)

    if not args.skip_transformers:
        import torch
        from transformers import AutoModelForCausalLM

        from prefdata.engines.embedded import resolve_model

        hf = load_engine(EngineConfig(backend="transformers", dtype=dtype, batch_size=32))
        out, seconds = timed(lambda: hf.generate(ids, params))
        tokens = sum(len(c.token_ids) for o in out for c in o)
        results["prefdata transformers engine.generate"] = {"tokens": tokens, "seconds": seconds}

        model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=getattr(torch, dtype)).eval()
        tok = hf.tokenizer
        tok.padding_side = "left"
        total, seconds = 0, 0.0
        for start in range(0, len(ids), 8):  # 8 prompts x n samples = 32 sequences per call
            chunk = ids[start:start + 8]
            batch = tok.pad({"input_ids": chunk}, return_tensors="pt")
            with torch.inference_mode():
                gen, dt = timed(lambda batch=batch: model.generate(**batch, do_sample=True, temperature=0.8, max_new_tokens=args.max_tokens,
                                                       num_return_sequences=args.n, pad_token_id=tok.pad_token_id))
            for row in gen[:, batch["input_ids"].shape[1]:].tolist():  # tokens up to and including EOS
                total += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            seconds += dt
        results["bare transformers model.generate"] = {"tokens": total, "seconds": seconds}

    base = results["bare vLLM LLM.generate"]
    base_rate = base["tokens"] / base["seconds"]
    print(f"{args.prompts} OASST prompts x n={args.n} x max {args.max_tokens} new tokens, SmolLM2-135M {dtype}, "
          f"KV cache {config.kv_cache_gib:g} GiB\n")
    print(f"{'path':55s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>8s} {'vs bare vLLM':>12s}")
    for name, r in results.items():
        if r["tokens"] is None:
            print(f"{name:55s} {'':>7s} {r['seconds']:8.1f} {'':>8s} {'':>12s}  ({r['pairs']} pairs from {r['prompts']} prompts)")
            continue
        rate = r["tokens"] / r["seconds"]
        print(f"{name:55s} {r['tokens']:7d} {r['seconds']:8.1f} {rate:8.0f} {rate / base_rate:11.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
