"""Flip-rate estimation on injected flips: estimate vs truth and flip-detection AUROC.

    python bench/noise.py [--limit 1312] [--gold 0.1]

Real HH-RLHF harmless pairs ($PREFDATA_DATA, default ../shared/data). A known share of pairs
(0, 0.1, 0.2, 0.3; nested sets, seed 0) is flipped; the cross-fitted embedding-RM ensemble
(MiniLM, 5 members x 5 folds, defaults of `embedding_rm`) is retrained on each noisy set and every
estimator of `prefdata.filters.noise` runs on its member margins. `moments` gets a gold subset
(a random `--gold` share of pairs whose true label is known: the original HH label). AUROC: how
well `flip_prob` (the mixture posterior) ranks the injected flips above the rest. The original HH
labels are themselves noisy, so estimates at injected rate 0 measure that base noise plus the
estimator's bias.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl
import pyarrow as pa
from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first

from prefdata.filters.noise import NoiseConfig, estimate_flip_rate
from prefdata.schemas.readers import read_pairs
from prefdata.scorers.embedding_rm import EmbeddingRewardModel, PairEmbeddings, TextEmbedder
from prefdata.types import SourceKind


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    ranks = pl.Series(scores).rank("average").to_numpy()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1312)
    parser.add_argument("--gold", type=float, default=0.1, help="share of pairs with a known true label")
    args = parser.parse_args()
    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH, limit=args.limit).table
    cols = table.to_pydict()
    started = time.perf_counter()
    clean = TextEmbedder().embed_pairs(cols["id"], cols["id"], cols["prompt"], cols["chosen"], cols["rejected"])
    embed_s = time.perf_counter() - started
    n = len(clean)
    rng = np.random.default_rng(0)
    order, gold_rows = rng.permutation(n), rng.permutation(n)[: round(args.gold * n)]
    rows = []
    for rate in (0.0, 0.1, 0.2, 0.3):
        flip = np.zeros(n, bool)
        flip[order[: round(rate * n)]] = True
        noisy = PairEmbeddings(clean.ids, clean.keys, clean.prompt, np.where(flip[:, None], clean.rejected, clean.chosen),
                               np.where(flip[:, None], clean.chosen, clean.rejected))
        margins = EmbeddingRewardModel(members=5, folds=5).fit(noisy).cross_fit(noisy).margins
        frame = pa.table({"id": clean.ids, "prompt_id": clean.ids, "member_margins": margins.tolist()})
        gold = pl.DataFrame({"key": [clean.ids[i] for i in gold_rows], "correct": [not flip[i] for i in gold_rows]})
        estimate, flip_prob = estimate_flip_rate(frame, NoiseConfig(bootstrap=200), gold)
        rows.append((rate, estimate["estimators"], auroc(np.array(flip_prob, dtype=float), flip) if rate else None,
                     auroc(-margins.mean(1), flip) if rate else None))
    print(f"{n} HH-RLHF harmless pairs, embeddings {embed_s:.0f} s; gold subset {len(gold_rows)} pairs\n")
    print("| injected flip rate | sign [interval] | mixture [interval] | moments (gold) [interval] | AUROC flip_prob | AUROC -strength_mean |")
    print("|---|---|---|---|---|---|")
    for rate, est, auc, auc_mu in rows:
        cells = [f"{est[k]['epsilon']:.3f} [{est[k]['interval'][0]:.3f}, {est[k]['interval'][1]:.3f}]"
                 if est[k].get("epsilon") is not None else "n/a" for k in ("sign", "mixture", "moments")]
        print(f"| {rate:.1f} | " + " | ".join(cells) + f" | {'-' if auc is None else f'{auc:.3f}'} | "
              f"{'-' if auc_mu is None else f'{auc_mu:.3f}'} |")


if __name__ == "__main__":
    main()
