"""CHES throughput: the `ches` stage next to a bare batched forward pass over the same tokens.

    python bench/ches.py [--pairs 64] [--dtype bfloat16] [--batch-size 16] [--repeats 3] [--vllm]

Reads HH-RLHF harmless pairs, then times, on the embedded SmolLM2-135M-Instruct:
* the `ches` stage's `process` (chat templates, tokenising, the forward passes, span sums in
  float32 on the device, the inner products): pairs/s;
* a bare `model(input_ids, attention_mask)` (the causal LM with its logits) over the same
  2 x pairs token sequences, in the same batches (longest first, `--batch-size` sequences);
* the bare decoder `model.model(...)` without the LM head (what CHES needs), same batches;
* with `--vllm`, the stage on the vLLM engine (its pooling runner).
The paths run interleaved `--repeats` times and each keeps its fastest time (the machine is
shared and noisy). Prints pairs/s and the ratio to the bare causal-LM forward, from one run.
"""

from __future__ import annotations

import argparse

from _common import DATA, timed  # noqa: E402, I001 - puts the repository on sys.path first


def bare_forward(engine, sequences: list[list[int]], batch_size: int, decoder_only: bool) -> None:
    import torch

    model = engine.model.model if decoder_only else engine.model
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), engine.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            model(input_ids=ids, attention_mask=mask, use_cache=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm", action="store_true")
    args = parser.parse_args()

    from prefdata.engines import ChatFormatter, EngineConfig, load_engine
    from prefdata.filters.ches import ChesStage
    from prefdata.pipeline.context import BuildContext, EnginePool
    from prefdata.schemas.formats import tokenize_pair
    from prefdata.schemas.readers import read_pairs
    from prefdata.types import SourceKind

    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH, limit=args.pairs).table
    engine = load_engine(EngineConfig(backend="transformers", dtype=args.dtype, forward_batch_size=args.batch_size))
    formatter = ChatFormatter(engine.tokenizer)
    sequences = []
    for row in table.select(["prompt", "chosen", "rejected"]).to_pylist():
        prompt, chosen, rejected = tokenize_pair(formatter, row["prompt"], row["chosen"], row["rejected"])
        sequences += [prompt + chosen, prompt + rejected]
    tokens = sum(len(s) for s in sequences)

    def run_stage(eng):
        pool = EnginePool({})
        pool.put("policy", eng)
        ctx = BuildContext(engines=pool)
        stage = ChesStage()
        stage.setup(ctx)
        return stage.process(table, ctx)

    paths = {
        "bare transformers forward (causal LM, logits)": lambda: bare_forward(engine, sequences, args.batch_size, False),
        "bare transformers decoder forward (no LM head)": lambda: bare_forward(engine, sequences, args.batch_size, True),
        "prefdata ches stage, transformers engine": lambda: run_stage(engine),
    }
    if args.vllm:
        vllm = load_engine(EngineConfig(backend="vllm", dtype=args.dtype, kv_cache_gib=1))
        paths["prefdata ches stage, vLLM engine (pooling runner)"] = lambda: run_stage(vllm)
    for fn in paths.values():  # warm-up: first-call allocations, vLLM's pooling runner start
        fn()
    results = {name: float("inf") for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            results[name] = min(results[name], timed(fn)[1])
    if args.vllm:
        vllm.close()

    base = results["bare transformers forward (causal LM, logits)"]
    print(f"{args.pairs} pairs, {len(sequences)} sequences, {tokens} tokens, dtype {args.dtype}, batch {args.batch_size}")
    print("| path | pairs/s | vs bare forward |\n|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {args.pairs / seconds:.3g} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
