"""bfloat16 vs float32 on this CPU: what the engines' default dtype (`native_dtype`) decides from.

    python bench/dtype.py [--tokens 400] [--sequences 32] [--repeats 2] [--skip-vllm]

On the embedded SmolLM2-135M-Instruct, the same random token sequences (seeded):
* transformers: the decoder forward `model.model(ids)` over `--sequences` sequences of `--tokens`
  tokens, in batches of 8; both dtypes loaded, repeats interleaved;
* vLLM: `score` (prompt log-probs of the second half of each sequence), one engine at a time (each
  owns the cores), a warm-up call, then the repeats.
Each path keeps its fastest repeat. Prints tokens/s and the float32 / bfloat16 speed ratio, and
whether torch sees native bfloat16 (AVX512-BF16 or AMX) on this CPU.
"""

from __future__ import annotations

import argparse

from _common import timed  # noqa: I001 - puts the repository on sys.path first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    from prefdata.engines import EngineConfig, load_engine
    from prefdata.engines.config import native_dtype

    rng = np.random.default_rng(0)
    sequences = rng.integers(100, 40000, (args.sequences, args.tokens))
    total = sequences.size
    dtypes = ("float32", "bfloat16")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native dtype here: {native_dtype(on_gpu=False)}")

    engines = {d: load_engine(EngineConfig(backend="transformers", dtype=d)) for d in dtypes}

    def forward(engine) -> None:
        with torch.inference_mode():
            for start in range(0, len(sequences), 8):
                engine.model.model(input_ids=torch.from_numpy(sequences[start : start + 8]), use_cache=False)

    best = {d: float("inf") for d in dtypes}
    for d in dtypes:
        forward(engines[d])  # warm-up
    for _ in range(args.repeats):
        for d in dtypes:
            best[d] = min(best[d], timed(lambda d=d: forward(engines[d]))[1])
    rows = [("transformers decoder forward", best)]

    if not args.skip_vllm:
        half = args.tokens // 2
        prompts = [[int(t) for t in s[:half]] for s in sequences]
        targets = [[int(t) for t in s[half:]] for s in sequences]
        best = {}
        for d in dtypes:
            engine = load_engine(EngineConfig(backend="vllm", dtype=d))
            engine.score(prompts[:2], targets[:2])  # warm-up
            best[d] = min(timed(lambda e=engine: e.score(prompts, targets))[1] for _ in range(args.repeats))
            engine.close()
        rows.append(("vLLM score (prompt log-probs)", best))

    print(f"{args.sequences} sequences x {args.tokens} tokens\n| path | float32 tok/s | bfloat16 tok/s | float32 speed-up |\n|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {total / seconds['float32']:.0f} | {total / seconds['bfloat16']:.0f} | "
              f"{seconds['bfloat16'] / seconds['float32']:.1f}x |")


if __name__ == "__main__":
    main()
