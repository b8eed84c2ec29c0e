"""Training step time and peak memory: prefdata's trainer next to TRL's DPOTrainer.

    python bench/train.py [--pairs 32] [--batch-size 4] [--max-length 256] [--out out/bench_train]

Same model (the embedded SmolLM2-135M-Instruct, float32 weights, no autocast), same pairs
(HH-RLHF harmless from ../shared/data, those whose prompt+response fits --max-length tokens, so
neither trainer truncates), same batch size, one epoch, AdamW at lr 1e-6, gradient clipping 1.0,
sigmoid loss, beta 0.1. Two reference modes each:

* reference model in memory: prefdata `reference = "model"` (a frozen copy), TRL `ref_model` loaded
  from the same folder;
* precomputed reference log-probs, no reference model: prefdata reads the `reference_logps` stage's
  columns; TRL `precompute_ref_log_probs=True` (its pass over the data at start-up is not timed).

TRL runs with `gradient_checkpointing=False` (its default is True), as prefdata's main runs, so both
do the same computation per step. prefdata computes response log-probs in chunks of 512 positions
(`logps_chunk`, never the full [rows, positions, vocab] logits) and runs the decoder on each batch's
real tokens only (`padding_free`); four variants with precomputed log-probs show where the time and
memory go: `prefdata-columns-full` (the full-logits path, `logps_chunk=0`), `prefdata-columns-gc`
(chunks plus gradient checkpointing of the decoder), `prefdata-columns-autograd-mlp` (the MLPs' own
backward instead of `lean_mlp`'s) and `prefdata-columns-padded` (`padding_free=False`). Each
configuration runs in its own process; peak memory is that process's peak RSS (`ru_maxrss`: imports, model, optimizer state, activations). Step time is the
median over the epoch's steps after the first. One run on a shared, noisy 2-core machine: compare
the ratios within a run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first

# Fair order: each prefdata run next to its TRL counterpart; the variants last.
RUNS = ("prefdata-model", "trl-model", "prefdata-columns", "trl-precompute", "prefdata-columns-full", "prefdata-columns-gc",
        "prefdata-columns-autograd-mlp", "prefdata-columns-padded")
VARIANTS = ("prefdata-columns-full", "prefdata-columns-gc", "prefdata-columns-autograd-mlp", "prefdata-columns-padded")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(out: Path, pairs: int, max_length: int) -> tuple[Path, Path]:
    """pairs.parquet (the pairs) and pairs_ref.parquet (+ reference_logps columns, float32 transformers);
    an earlier run's files in `out` with at least `pairs` rows are reused (their first `pairs` rows)."""
    import pyarrow.parquet as pq

    cached = [out / "all_pairs.parquet", out / "all_pairs_ref.parquet"]
    if all(p.is_file() for p in cached) and pq.read_metadata(cached[0]).num_rows >= pairs:
        paths = (out / "pairs.parquet", out / "pairs_ref.parquet")
        for source, target in zip(cached, paths):
            pq.write_table(pq.read_table(source).slice(0, pairs), target)
        return paths

    from prefdata.builder import run_build
    from prefdata.engines import EngineConfig, load_engine
    from prefdata.scorers.reference_logps import ReferenceLogpsStage
    from prefdata.train.data import EncodeSpec, encode_pairs

    built = run_build({"name": "bench_train", "source": {"path": str(DATA / "hh_rlhf_harmless_test_1312.jsonl"),
                                                         "kind": "hh", "limit": 400},
                       "output": {"dir": str(out / "hh")}})
    table = pq.read_table(next((built.out_dir / "data").glob("*.parquet")))
    engine = load_engine(EngineConfig(backend="transformers", dtype="float32", batch_size=8))
    fits = encode_pairs(table.to_pylist(), engine.tokenizer, EncodeSpec(max_length=max_length))
    keep = {e.id for e in fits.examples[:pairs]}
    table = table.filter([i in keep for i in table.column("id").to_pylist()])
    plain, with_ref = out / "pairs.parquet", out / "pairs_ref.parquet"
    pq.write_table(table, plain)
    stage = ReferenceLogpsStage()
    stage.engine = engine
    pq.write_table(stage.process(table, None).table, with_ref)
    engine.close()
    for source, target in zip((plain, with_ref), cached):
        target.write_bytes(source.read_bytes())
    return plain, with_ref


def child_prefdata(data: Path, reference: str, args: argparse.Namespace, chunk: int = 512, checkpointing: bool = False,
                   lean_mlp: bool = True, padding_free: bool = True) -> dict:
    from prefdata.train import TrainConfig, train

    result = train(TrainConfig(dataset=data, output_dir=Path(args.out) / f"run-prefdata-{reference}", reference=reference,
                               logps_chunk=chunk, gradient_checkpointing=checkpointing, lean_mlp=lean_mlp, padding_free=padding_free,
                               batch_size=args.batch_size, epochs=1, lr=1e-6, warmup_ratio=0.0, max_grad_norm=1.0,
                               max_length=args.max_length, precision="fp32", device="cpu", save_final=False),
                   progress=False)
    return {"step_seconds": [m["seconds"] for m in result.metrics], "pairs": result.counts["pairs"]}


def child_trl(data: Path, precompute: bool, args: argparse.Namespace) -> dict:
    import datasets
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from prefdata.engines.embedded import resolve_model

    path = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = datasets.Dataset(pq.read_table(data))
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)

    config = DPOConfig(output_dir=str(Path(args.out) / f"run-trl-{precompute}"), per_device_train_batch_size=args.batch_size,
                       num_train_epochs=1, learning_rate=1e-6, lr_scheduler_type="constant", max_grad_norm=1.0,
                       use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                       gradient_checkpointing=False, max_length=args.max_length, precompute_ref_log_probs=precompute,
                       beta=0.1, loss_type=["sigmoid"], dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    return {"step_seconds": times, "pairs": len(dataset), "ref_model_in_memory": trainer.ref_model is not None}


def run_child(name: str, plain: Path, with_ref: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", name, "--plain", str(plain), "--with-ref", str(with_ref),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--out", args.out]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default="out/bench_train")
    parser.add_argument("--runs", default=",".join(RUNS), help="which configurations to run, in this order")
    parser.add_argument("--child", choices=RUNS)
    parser.add_argument("--plain")
    parser.add_argument("--with-ref")
    args = parser.parse_args()

    if args.child:
        plain, with_ref = Path(args.plain), Path(args.with_ref)
        started = time.perf_counter()
        if args.child == "prefdata-model":
            out = child_prefdata(plain, "model", args)
        elif args.child == "prefdata-columns":
            out = child_prefdata(with_ref, "columns", args)
        elif args.child == "prefdata-columns-full":
            out = child_prefdata(with_ref, "columns", args, chunk=0)
        elif args.child == "prefdata-columns-gc":
            out = child_prefdata(with_ref, "columns", args, checkpointing=True)
        elif args.child == "prefdata-columns-autograd-mlp":
            out = child_prefdata(with_ref, "columns", args, lean_mlp=False)
        elif args.child == "prefdata-columns-padded":
            out = child_prefdata(with_ref, "columns", args, padding_free=False)
        else:
            out = child_trl(plain, args.child == "trl-precompute", args)
        out.update({"peak_rss_mib": peak_rss_mib(), "wall_seconds": time.perf_counter() - started})
        print(json.dumps(out))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain, with_ref = prepare(out, args.pairs, args.max_length)
    results = {name: run_child(name, plain, with_ref, args) for name in args.runs.split(",")}
    for r in results.values():
        steps = r["step_seconds"][1:] or r["step_seconds"]
        r["median_step_seconds"] = statistics.median(steps)
        r["steps"] = len(r["step_seconds"])
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"{args.pairs} pairs (HH harmless, <= {args.max_length} tokens), batch {args.batch_size}, SmolLM2-135M fp32, CPU\n")
    print("| reference | trainer | median step (s) | peak RSS (MiB) | step time vs TRL | memory vs TRL |")
    print("|---|---|---|---|---|---|")
    for mode, ours, theirs in (("model in memory", "prefdata-model", "trl-model"),
                               ("precomputed log-probs", "prefdata-columns", "trl-precompute")):
        if ours not in results or theirs not in results:
            continue
        a, b = results[ours], results[theirs]
        variants = [(n, results[n]) for n in VARIANTS
                    if n in results and ours == "prefdata-columns"]
        for name, r in [(ours, a), *variants, (theirs, b)]:
            ratio_t = r["median_step_seconds"] / b["median_step_seconds"]
            ratio_m = r["peak_rss_mib"] / b["peak_rss_mib"]
            print(f"| {mode} | {name} | {r['median_step_seconds']:.2f} | {r['peak_rss_mib']:.0f} | {ratio_t:.2f}x | {ratio_m:.2f}x |")


if __name__ == "__main__":
    main()
