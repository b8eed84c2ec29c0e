"""Flip-rate estimation on injected flips: estimate vs truth, RM fitted on separate clean pairs or cross-fitted.

    python bench/noise.py [--eval 1000] [--gold 0.1] [--draws 10] [--out out/bench_noise]

Real HH-RLHF harmless pairs ($PREFDATA_TEST_DATA, default ../shared/data: 1312 pairs), shuffled
once (seed 0) and split into `--eval` evaluation pairs and the rest (312 by default), a separate
pool of clean pairs. A known share f of the evaluation pairs' labels is flipped (0, 0.1, 0.2, 0.3;
nested sets, seed 0), and each estimator of `prefdata.filters.noise` runs in two settings:

* **separate** (the realistic case, `embedding_rm` with `train_path`): the embedding-RM ensemble
  (MiniLM, 5 members x 5 folds, the stage's defaults) is fitted once on the clean separate pool;
  its out-of-fold accuracy there is the held-out accuracy `calibrated` uses; the evaluation pairs
  are scored by heads that never saw them.
* **cross-fitted** (no `train_path`): the ensemble is cross-fitted on each noisy evaluation set
  itself (it learns from the flipped labels); `moments` and `calibrated` get a gold subset
  (`--gold` share of the evaluation pairs with their original label).

The truth at rate f is base + f (1 - 2 base), base = the estimator's own estimate at f = 0 (the
original HH labels carry their own noise, which a flip of a random subset mixes in); the table
shows estimate, interval, truth and whether |estimate - truth| <= 0.08. One draw of flipped labels
carries luck (which labels were flipped moves the judge's disagreement by about +-0.01 at f = 0.1,
i.e. +-0.06 in eps for a judge of accuracy 0.59), so the separate setting is also run over `--draws`
independent flip draws per rate: mean +- std of each estimator and how many land within 0.08. Embeddings are cached in
--out (embeddings.npz) so a rerun skips the encoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first

from prefdata.filters.noise import NoiseConfig, estimate_flip_rate
from prefdata.schemas.readers import read_pairs
from prefdata.scorers.embedding_rm import EmbeddingRewardModel, PairEmbeddings, TextEmbedder
from prefdata.types import SourceKind

RATES = (0.0, 0.1, 0.2, 0.3)
GOAL = 0.08


def embeddings(out: Path) -> tuple[PairEmbeddings, float]:
    cache = out / "embeddings.npz"
    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH).table
    ids = table.column("id").to_pylist()
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["ids"]) == ids:
            return PairEmbeddings(ids, ids, z["prompt"], z["chosen"], z["rejected"]), 0.0
    cols = table.to_pydict()
    started = time.perf_counter()
    pairs = TextEmbedder().embed_pairs(ids, ids, cols["prompt"], cols["chosen"], cols["rejected"])
    seconds = time.perf_counter() - started
    np.savez(cache, ids=np.array(ids), prompt=pairs.prompt, chosen=pairs.chosen, rejected=pairs.rejected)
    return pairs, seconds


def subset(pairs: PairEmbeddings, rows: np.ndarray, flip: np.ndarray | None = None) -> PairEmbeddings:
    flip = np.zeros(len(rows), bool) if flip is None else flip
    chosen, rejected = pairs.chosen[rows], pairs.rejected[rows]
    ids = [pairs.ids[i] for i in rows]
    return PairEmbeddings(ids, ids, pairs.prompt[rows], np.where(flip[:, None], rejected, chosen),
                          np.where(flip[:, None], chosen, rejected))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, embed_s = embeddings(out)
    n = len(pairs)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    eval_rows, fit_rows = order[: args.eval], order[args.eval :]
    m = len(eval_rows)
    flip_order, gold_rows = rng.permutation(m), rng.permutation(m)[: round(args.gold * m)]
    config = NoiseConfig(bootstrap=args.bootstrap)

    # separate: fitted once on the clean pool; out-of-fold accuracy there calibrates
    fit_pairs = subset(pairs, fit_rows)
    separate = EmbeddingRewardModel(members=5, folds=5).fit(fit_pairs)
    oof = separate.cross_fit(fit_pairs).margins
    correct = np.nanmean(oof, axis=1) > 0
    calibration = {"correct": correct.tolist(), "members": [0, 5], "source": f"out of fold on {len(fit_rows)} separate pairs"}

    results = {"pairs": n, "eval_pairs": m, "fit_pairs": int(len(fit_rows)), "gold_pairs": int(len(gold_rows)),
               "embed_seconds": round(embed_s, 1), "separate_oof_accuracy": float(correct.mean()), "rates": {}}
    for rate in RATES:
        flip = flip_mask(flip_order, rate)
        noisy = subset(pairs, eval_rows, flip)
        gold = pl.DataFrame({"key": [noisy.ids[i] for i in gold_rows], "correct": [not flip[i] for i in gold_rows]})
        row = {}
        margins = separate.cross_fit(noisy).margins
        row["separate"] = separate_estimators(noisy, margins, calibration, config)
        crossed = EmbeddingRewardModel(members=5, folds=5).fit(noisy).cross_fit(noisy).margins
        frame = pa.table({"id": noisy.ids, "prompt_id": noisy.ids, "member_margins": crossed.tolist()})
        row["cross-fitted"] = estimate_flip_rate(frame, config, gold)[0]["estimators"]
        row["cross_fitted_accuracy_vs_truth"] = float(np.mean((np.nanmean(crossed, 1) > 0) != flip))
        row["separate_accuracy_vs_truth"] = float(np.mean((np.nanmean(margins, 1) > 0) != flip))
        results["rates"][str(rate)] = row
    results["draws"] = separate_draws(separate, pairs, eval_rows, results["rates"], calibration, config, args.draws)
    return results


def flip_mask(order: np.ndarray, rate: float) -> np.ndarray:
    """The first `rate` share of `order` flipped (nested sets across rates for one order)."""
    flip = np.zeros(len(order), bool)
    flip[order[: round(rate * len(order))]] = True
    return flip


def separate_estimators(noisy: PairEmbeddings, margins: np.ndarray, calibration: dict, config: NoiseConfig) -> dict:
    frame = pa.table({"id": noisy.ids, "prompt_id": noisy.ids, "member_margins": margins.tolist()})
    return estimate_flip_rate(frame, config, None, calibration)[0]["estimators"]


def separate_draws(model: EmbeddingRewardModel, pairs: PairEmbeddings, eval_rows: np.ndarray, first: dict,
                   calibration: dict, config: NoiseConfig, draws: int) -> dict:
    """The separate setting over `draws` independent flip draws per rate: draw 0 is the table's (`first`,
    run()'s results by rate), the others fresh; one draw's estimate carries the luck of which labels
    were flipped, the spread shows it."""
    found = {str(rate): [{k: v.get("epsilon") for k, v in first[str(rate)]["separate"].items()}] for rate in RATES[1:]}
    for draw in range(1, draws):
        order = np.random.default_rng(100 + draw).permutation(len(eval_rows))
        for rate in RATES[1:]:
            noisy = subset(pairs, eval_rows, flip_mask(order, rate))
            estimators = separate_estimators(noisy, model.cross_fit(noisy).margins, calibration, config)
            found[str(rate)].append({k: v.get("epsilon") for k, v in estimators.items()})
    return found


def draws_table(results: dict) -> str:
    """Per estimator and rate: mean +- std of the estimate over the draws, the truth, and the share within the goal."""
    draws = results["draws"]
    count = len(draws[str(RATES[1])])
    lines = [f"| estimator ({count} flip draws, separate) | " + " | ".join(f"f = {r}" for r in RATES[1:])
             + " | within +-0.08 (all rates) |", "|---|" + "---|" * len(RATES)]
    for name in ("calibrated", "mixture", "sign"):
        base = results["rates"]["0.0"]["separate"][name].get("epsilon")
        if base is None:
            continue
        cells, hits, total = [], 0, 0
        for rate in RATES[1:]:
            values = np.array([d[name] for d in draws[str(rate)]], dtype=float)
            truth = base + rate * (1 - 2 * base)
            hits += int((np.abs(values - truth) <= GOAL).sum())
            total += len(values)
            cells.append(f"{values.mean():.3f} +- {values.std(ddof=1) if len(values) > 1 else 0:.3f} (truth {truth:.3f})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {hits}/{total} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    lines = ["| setting | estimator | " + " | ".join(f"f = {r}" for r in RATES) + " | within +-0.08 at 0.1/0.2/0.3 |",
             "|---|---|" + "---|" * (len(RATES) + 1)]
    for setting, names in (("separate", ("calibrated", "mixture", "sign")),
                           ("cross-fitted", ("calibrated", "mixture", "sign"))):
        for name in names:
            base_est = results["rates"]["0.0"][setting][name]
            if base_est.get("epsilon") is None:
                continue
            base = base_est["epsilon"]
            cells, hits = [], []
            for rate in RATES:
                est = results["rates"][str(rate)][setting][name]
                truth = base + rate * (1 - 2 * base)
                lo, hi = est["interval"]
                cells.append(f"{est['epsilon']:.3f} [{lo:.3f}, {hi:.3f}]" + (f" (truth {truth:.3f})" if rate else ""))
                if rate:
                    hits.append("yes" if abs(est["epsilon"] - truth) <= GOAL else "no")
            label = name + (" (gold)" if setting == "cross-fitted" and name == "calibrated" else "")
            lines.append(f"| {setting} | `{label}` | " + " | ".join(cells) + " | " + "/".join(hits) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=1000, help="evaluation pairs (the rest is the separate clean pool)")
    parser.add_argument("--gold", type=float, default=0.1, help="share of evaluation pairs with a known label (cross-fitted)")
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--draws", type=int, default=10, help="flip draws per rate for the separate setting's spread")
    parser.add_argument("--out", default="out/bench_noise")
    args = parser.parse_args()
    results = run(args)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2))
    print(f"{results['pairs']} HH-RLHF harmless pairs: {results['eval_pairs']} evaluated, {results['fit_pairs']} separate "
          f"clean pairs (RM out-of-fold accuracy there {results['separate_oof_accuracy']:.3f}), gold subset "
          f"{results['gold_pairs']}; embeddings {results['embed_seconds']:.0f} s\n")
    print(table(results))
    print()
    print(draws_table(results))


if __name__ == "__main__":
    main()
