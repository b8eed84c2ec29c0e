"""Flip-rate estimation on injected flips: estimate vs truth, RM fitted on separate clean pairs or cross-fitted.

    python bench/noise.py [--eval 1000] [--gold 0.1] [--draws 300] [--repeats 300] [--out out/bench_noise]

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
shows estimate, interval, truth and whether |estimate - truth| <= 0.08.

One draw of flipped labels carries luck: which labels were flipped moves the judge's disagreement d,
and `calibrated` turns that into eps / (2a - 1). So the separate setting is also run over `--draws`
independent flip draws per rate (cheap: fixed heads, a flip negates a pair's margins): mean +- std
of each estimator, how many land within 0.08, the spread `spread_formula` predicts for
`calibrated`, and how often its interval covers the truth. Last, `calibrated` with simulated judges
of known accuracy (this judge's and stronger ones; judge, calibration pool and flips redrawn per
repeat) shows which accuracy the +-0.08 goal needs at this size. Embeddings are cached in --out
(embeddings.npz) so a rerun skips the encoder.
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

from prefdata.filters.noise import (
    NoiseConfig,
    calibrated_estimate,
    estimate_flip_rate,
    fit_mirrored_mixture,
    sign_estimate,
)
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
               "embed_seconds": round(embed_s, 1), "separate_oof_accuracy": float(correct.mean()),
               "oof_accuracy_by_margin_third": accuracy_by_margin(np.nanmean(oof, axis=1), correct), "rates": {}}
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
    results["draws"] = separate_draws(separate, pairs, eval_rows, calibration, config, args.draws, args.draw_seed)
    accuracies = tuple(sorted({round(results["separate_oof_accuracy"], 3), 0.65, 0.7, 0.75, 0.8}))
    results["simulated_judges"] = simulated_judges(m, len(fit_rows), accuracies, args.repeats, 200, config.level)
    return results


def accuracy_by_margin(mu: np.ndarray, correct: np.ndarray, parts: int = 3) -> list[float]:
    """Held-out accuracy in equal-count |margin| bins, lowest first: how much a margin-weighted estimator could gain."""
    return [float(correct[rows].mean()) for rows in np.array_split(np.argsort(np.abs(mu)), parts)]


def flip_mask(order: np.ndarray, rate: float) -> np.ndarray:
    """The first `rate` share of `order` flipped (nested sets across rates for one order)."""
    flip = np.zeros(len(order), bool)
    flip[order[: round(rate * len(order))]] = True
    return flip


def separate_estimators(noisy: PairEmbeddings, margins: np.ndarray, calibration: dict, config: NoiseConfig) -> dict:
    frame = pa.table({"id": noisy.ids, "prompt_id": noisy.ids, "member_margins": margins.tolist()})
    return estimate_flip_rate(frame, config, None, calibration)[0]["estimators"]


def separate_draws(model: EmbeddingRewardModel, pairs: PairEmbeddings, eval_rows: np.ndarray, calibration: dict,
                   config: NoiseConfig, draws: int, draw_seed: int = 100) -> dict:
    """The separate setting over `draws` independent flip draws per rate (seeds draw_seed + draw).

    The heads are fixed, so flipping a pair swaps its two responses and negates every member's margin
    exactly: each draw negates the clean margins of its flipped rows instead of rescoring (checked
    against a rescore on the first draw). Per draw: every estimator's point estimate, and the
    `calibrated` interval (its bootstrap is cheap) to count how often it covers the truth. One
    draw's estimate carries the luck of which labels were flipped; the spread shows it."""
    clean = model.cross_fit(subset(pairs, eval_rows)).margins
    found: dict[str, list[dict]] = {str(rate): [] for rate in RATES}
    for draw in range(draws):
        order = np.random.default_rng(draw_seed + draw).permutation(len(eval_rows))
        for rate in RATES if draw == 0 else RATES[1:]:
            flip = flip_mask(order, rate)
            margins = np.where(flip[:, None], -clean, clean)
            if draw == 0 and rate == RATES[-1]:
                rescored = model.cross_fit(subset(pairs, eval_rows, flip)).margins
                assert np.allclose(rescored, margins, atol=1e-5, equal_nan=True), "a flip must negate the margins"
            mu = np.nanmean(margins, axis=1)
            agree = mu > 0
            estimate = calibrated_estimate(agree, np.asarray(calibration["correct"], bool), config.bootstrap,
                                           config.level, seed=draw)
            found[str(rate)].append({
                "calibrated": estimate["epsilon"], "calibrated_interval": estimate["interval"],
                "mixture": fit_mirrored_mixture(mu)[0],
                "sign": sign_estimate(mu, np.nanstd(margins, axis=1), config.z)["epsilon"],
                "disagreement": float(1 - agree.mean())})
    return found


def spread_formula(n: int, rate: float, disagreement: float, accuracy: float) -> float:
    """Std over flip draws of `calibrated` with the judge's verdicts and the accuracy fixed: flipping k = rate n
    pairs drawn without replacement moves d by (1/n) sum over them of (1 - 2 c_i), c_i = 1 where the judge
    disagrees with the original label (mean 1 - 2 d0, variance 4 d0 (1 - d0)); eps moves by that / (2a - 1)."""
    k = round(rate * n)
    return float(np.sqrt(k * (n - k) / (n - 1) * 4 * disagreement * (1 - disagreement)) / n / (2 * accuracy - 1))


def draws_table(results: dict) -> str:
    """Per estimator and rate: mean +- std of the estimate over the draws, the truth (base = the mean at f = 0 is
    the draw-free clean estimate), the share within the goal, and for `calibrated` the spread the formula
    predicts and how often its interval covered the truth."""
    draws, n, accuracy = results["draws"], results["eval_pairs"], results["separate_oof_accuracy"]
    count = len(draws[str(RATES[1])])
    lines = [f"| estimator ({count} flip draws per rate, separate) | " + " | ".join(f"f = {r}" for r in RATES[1:])
             + " | within +-0.08 (all rates) |", "|---|" + "---|" * len(RATES)]
    for name in ("calibrated", "mixture", "sign"):
        base = draws[str(RATES[0])][0][name]
        cells, hits, total, covered = [], 0, 0, 0
        for rate in RATES[1:]:
            values = np.array([d[name] for d in draws[str(rate)]], dtype=float)
            truth = base + rate * (1 - 2 * base)
            hits += int((np.abs(values - truth) <= GOAL).sum())
            total += len(values)
            cell = f"{values.mean():.3f} +- {values.std(ddof=1):.3f} (truth {truth:.3f}"
            if name == "calibrated":
                formula = spread_formula(n, rate, draws[str(RATES[0])][0]["disagreement"], accuracy)
                cover = sum(lo <= truth <= hi for lo, hi in (d["calibrated_interval"] for d in draws[str(rate)]))
                covered += cover
                cell += f"; formula +- {formula:.3f}; interval covers {cover / len(values):.0%}"
            cells.append(cell + ")")
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {hits}/{total} ({hits / total:.0%}) |")
    return "\n".join(lines)


def simulated_judges(eval_pairs: int, fit_pairs: int, accuracies: tuple[float, ...], repeats: int,
                     bootstrap: int, level: float) -> dict:
    """`calibrated` with synthetic judges of known accuracy a, everything redrawn per repeat (the judge's
    verdicts on `eval_pairs` clean labels, a calibration pool of `fit_pairs` held-out pairs, the flips):
    the share of estimates within the goal and of intervals covering the truth f, per accuracy."""
    found = {}
    for accuracy in accuracies:
        rng = np.random.default_rng(round(accuracy * 1000))
        hits, covered = 0, 0
        for _ in range(repeats):
            right = rng.random(eval_pairs) < accuracy
            held_out = rng.random(fit_pairs) < accuracy
            order = rng.permutation(eval_pairs)
            for rate in RATES[1:]:
                est = calibrated_estimate(right ^ flip_mask(order, rate), held_out, bootstrap, level,
                                          seed=int(rng.integers(1 << 31)))
                if est["epsilon"] is not None:  # None (held-out accuracy <= 1/2) counts as a miss
                    hits += abs(est["epsilon"] - rate) <= GOAL
                    covered += est["interval"][0] <= rate <= est["interval"][1]
        total = repeats * len(RATES[1:])
        found[str(accuracy)] = {"within": hits / total, "covered": covered / total, "estimates": total}
    return found


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
    parser.add_argument("--draws", type=int, default=300, help="flip draws per rate for the separate setting's spread")
    parser.add_argument("--draw-seed", type=int, default=100, help="seed of the first flip draw (draw i: seed + i)")
    parser.add_argument("--repeats", type=int, default=300, help="repeats per accuracy of the simulated judges")
    parser.add_argument("--out", default="out/bench_noise")
    args = parser.parse_args()
    results = run(args)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2))
    print(f"{results['pairs']} HH-RLHF harmless pairs: {results['eval_pairs']} evaluated, {results['fit_pairs']} separate "
          f"clean pairs (RM out-of-fold accuracy there {results['separate_oof_accuracy']:.3f}), gold subset "
          f"{results['gold_pairs']}; embeddings {results['embed_seconds']:.0f} s; out-of-fold accuracy by |margin| "
          f"third, lowest first: {', '.join(f'{a:.3f}' for a in results['oof_accuracy_by_margin_third'])}\n")
    print(table(results))
    print()
    print(draws_table(results))
    print()
    print(f"| simulated judge accuracy ({args.repeats} repeats x 3 rates; {results['eval_pairs']} pairs, "
          f"{results['fit_pairs']} held out) | within +-0.08 | interval covers f |\n|---|---|---|")
    for accuracy, row in results["simulated_judges"].items():
        print(f"| {accuracy} | {row['within']:.0%} | {row['covered']:.0%} |")


if __name__ == "__main__":
    main()
