"""Held-out pairwise accuracy of the cross-fitted embedding reward model on real preference data.

    python bench/embedding_rm.py [--members 5] [--folds 5] [--hidden 0]

Datasets (from $PREFDATA_DATA, default ../shared/data):
* hh_rlhf_harmless_test_1312.jsonl: HH-RLHF harmless-base test pairs (human label: chosen);
* qa_feedback_dev_350.jsonl: 4 answers per question, 6 human pairwise judgements each
  (1v2, 1v3, 1v4, 2v3, 2v4, 3v4; ties skipped); folds are by question, so no head saw the
  question of a pair it scores.

Every pair is scored out of fold (K-fold cross-fitting). Reported: accuracy of the ensemble mean
margin (share of pairs with mean margin > 0), the mean single-member accuracy, and timings.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import combinations

import numpy as np
from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first

from prefdata.schemas.readers import read_pairs
from prefdata.scorers.embedding_rm import EmbeddingRewardModel, TextEmbedder
from prefdata.types import SourceKind


def hh_pairs() -> dict:
    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH).table.to_pydict()
    return {k: table[k] for k in ("id", "prompt_id", "prompt", "chosen", "rejected")}


def qa_feedback_pairs() -> dict:
    out: dict[str, list] = {k: [] for k in ("id", "prompt_id", "prompt", "chosen", "rejected")}
    for line in (DATA / "qa_feedback_dev_350.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for (i, j), label in zip(combinations(range(1, 5), 2), row["preference"]):
            a, b = row[f"prediction {i}"], row[f"prediction {j}"]
            if label == 0 or a.strip() == b.strip():
                continue
            chosen, rejected = (a, b) if label == 1 else (b, a)
            out["id"].append(f"{row['id']}-{i}v{j}")
            out["prompt_id"].append(row["id"])
            out["prompt"].append([{"role": "user", "content": row["question"]}])
            out["chosen"].append([{"role": "assistant", "content": chosen}])
            out["rejected"].append([{"role": "assistant", "content": rejected}])
    return out


def evaluate(name: str, pairs: dict, embedder: TextEmbedder, args) -> dict:
    started = time.perf_counter()
    emb = embedder.embed_pairs(pairs["id"], pairs["prompt_id"], pairs["prompt"], pairs["chosen"], pairs["rejected"])
    embedded = time.perf_counter()
    rm = EmbeddingRewardModel(members=args.members, folds=args.folds, hidden=args.hidden, steps=args.steps)
    scores = rm.fit(emb).cross_fit(emb)
    done = time.perf_counter()
    margins = scores.margins
    return {"dataset": name, "pairs": len(emb), "prompts": len(set(pairs["prompt_id"])),
            "ensemble_accuracy": float(np.mean(np.nanmean(margins, axis=1) > 0)),
            "member_accuracy": float(np.nanmean(margins > 0)),
            "embed_s": round(embedded - started, 1), "fit_score_s": round(done - embedded, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    embedder = TextEmbedder()
    rows = [evaluate("hh_rlhf_harmless_test_1312", hh_pairs(), embedder, args),
            evaluate("qa_feedback_dev_350", qa_feedback_pairs(), embedder, args)]
    print("| dataset | pairs | prompts | ensemble accuracy | mean member accuracy | embed (s) | fit + score (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['pairs']} | {r['prompts']} | {r['ensemble_accuracy']:.3f} | "
              f"{r['member_accuracy']:.3f} | {r['embed_s']} | {r['fit_score_s']} |")


if __name__ == "__main__":
    main()
