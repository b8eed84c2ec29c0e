"""Scorer throughput: FLR and the pointwise judge next to a bare engine pass over the same tokens.

    python bench/score.py [--rows 8] [--backend transformers|vllm] [--max-chars 400]

Rows are (AlpacaEval instruction, one model's answer cut to --max-chars) pairs from
../shared/data/alpaca_eval_multi_200.jsonl. For each scorer it prints rows/s of
`scorer.score(...)` and of a bare pass of the model over exactly the token sequences the scorer
sends to its engine, and their ratio (scorer / bare: 1.0 means no overhead):

* FLR: every (row, follow-up) sequence, log-softmax at the follow-up positions (transformers:
  `AutoModelForCausalLM` forwards, right-padded batches of the engine's batch size, longest
  first; vLLM: `LLM.generate` with `prompt_logprobs=0`, `max_tokens=1`).
* judge: the judge prompts ending in "Rating:" (and the multi-token rating continuations),
  top-20 log-probs of the next token (transformers: forward + top-k; vLLM: `max_tokens=1`,
  `logprobs=20`).

One run; the machine is shared and noisy, so compare ratios within a run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import DATA, timed  # noqa: E402, I001 - puts the repository on sys.path first


def load_rows(n: int, max_chars: int) -> tuple[list, list[str]]:
    prompts, responses = [], []
    with (DATA / "alpaca_eval_multi_200.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            for completion in row["completions"]:
                if len(prompts) == n:
                    return prompts, responses
                prompts.append([{"role": "user", "content": row["instruction"]}])
                responses.append(completion["output"][:max_chars])
    return prompts, responses


def bare_transformers(model, sequences: list[list[int]], batch_size: int, positions: list[range] | None) -> None:
    """Forward passes over `sequences`; log-softmax at `positions` (FLR) or top-20 of the last token (judge)."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, i in enumerate(batch):
                if positions is not None:
                    span = positions[i]
                    target = ids[row, span.start + 1 : span.stop + 1]
                    torch.log_softmax(logits[row, span].float(), -1).gather(-1, target[:, None])
                else:
                    torch.log_softmax(logits[row, len(sequences[i]) - 1].float(), -1).topk(20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--max-chars", type=int, default=400)
    args = parser.parse_args()

    from prefdata.engines import ChatFormatter, EngineConfig, load_engine
    from prefdata.scorers import FLRScorer, JudgeConfig, PointwiseJudge, ScoreBatch
    from prefdata.scorers.flr import follow_up_tokens
    from prefdata.scorers.judge import RATING_PREFIX, RatingReader

    prompts, responses = load_rows(args.rows, args.max_chars)
    batch = ScoreBatch(prompts, responses)
    engine = load_engine(EngineConfig(backend=args.backend, dtype="float32", forward_batch_size=8, kv_cache_gib=1))
    formatter = ChatFormatter(engine.tokenizer)
    flr, judge = FLRScorer(engine=engine), PointwiseJudge(JudgeConfig(), engine=engine)
    flr.score(ScoreBatch(prompts[:1], responses[:1]))  # warm-up (and the judge's label trie)
    judge.score(ScoreBatch(prompts[:1], responses[:1]))

    # The exact token sequences each scorer sends to the engine.
    positive, negative = flr.config.follow_ups()
    flr_pieces = [follow_up_tokens(formatter, [*p, {"role": "assistant", "content": r}], f)
                  for p, r in zip(prompts, responses) for f in (*positive, *negative)]
    flr_sequences = [c + t for c, t in flr_pieces]
    flr_positions = [range(len(c) - 1, len(c) + len(t) - 1) for c, t in flr_pieces]
    reader = RatingReader(formatter, range(1, 11), RATING_PREFIX)
    judge_prompts = [formatter.prompt_ids(judge.judge_messages(p, r), assistant_prefix=RATING_PREFIX)
                     for p, r in zip(prompts, responses)]
    judge_sequences = [ids + list(path) for path in reader._internal_paths() for ids in judge_prompts]

    if args.backend == "vllm":
        from vllm import SamplingParams as VSamplingParams

        llm = engine._llm  # the same loaded LLM, called directly

        def reset() -> None:
            llm.reset_prefix_cache()  # each pass starts cold: no pass reuses another's prefixes

        def bare_flr():
            params = VSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
            return llm.generate([{"prompt_token_ids": s} for s in flr_sequences], params, use_tqdm=False)

        def bare_judge():
            params = VSamplingParams(max_tokens=1, logprobs=20, temperature=0.0)
            return llm.generate([{"prompt_token_ids": s} for s in judge_sequences], params, use_tqdm=False)
    else:
        model = engine.model

        def reset() -> None:
            pass

        def bare_flr():
            return bare_transformers(model, flr_sequences, 8, flr_positions)

        def bare_judge():
            return bare_transformers(model, judge_sequences, 8, None)

    results = {}
    for name, scorer_call, bare_call, n_sequences in (
            ("flr", lambda: flr.score(batch), bare_flr, len(flr_sequences)),
            ("judge", lambda: judge.score(batch), bare_judge, len(judge_sequences))):
        reset()
        scored, scorer_seconds = timed(scorer_call)
        print(f"{name}: scorer {scorer_seconds:.1f} s", file=sys.stderr, flush=True)
        reset()
        _, bare_seconds = timed(bare_call)
        print(f"{name}: bare {bare_seconds:.1f} s", file=sys.stderr, flush=True)
        results[name] = {
            "rows": len(batch), "engine_sequences": n_sequences,
            "tokens": sum(len(s) for s in (flr_sequences if name == "flr" else judge_sequences)),
            "null_scores": sum(v is None for v in scored.values),
            "scorer_rows_per_s": round(len(batch) / scorer_seconds, 3),
            "bare_rows_per_s": round(len(batch) / bare_seconds, 3),
            "scorer_seconds": round(scorer_seconds, 2), "bare_seconds": round(bare_seconds, 2),
            "ratio_scorer_vs_bare": round(bare_seconds / scorer_seconds, 3),
        }
    engine.close()
    print(json.dumps({"backend": args.backend, "rows": args.rows, "max_chars": args.max_chars, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
