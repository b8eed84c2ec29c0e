"""Precision of the rationale conclusion check on rationales the embedded model writes.

    python bench/rationale_check.py [--pairs 50] [--out out/bench_rationale]          # generate + check
    python bench/rationale_check.py --score bench/rationale_check_labels.json         # precision vs labels

Generates one rationale for each of the first `--pairs` HH-RLHF harmless pairs with the embedded
SmolLM2-135M (transformers backend, fp32, the rationale stage's defaults: temperature 0.7, 128
tokens), runs the stage's conclusion check (the text's stated side first, then the judge) and
writes every rationale with its verdict to rationales.jsonl. The stricter rule a person applies
to each text (recorded in the labels file, one label per pair id):

  correct   the text says, in so many words, that the CHOSEN response is the better one: it names
            its position (above/below, first/second) or quotes/paraphrases content only the chosen
            response has, and nowhere says the rejected one is better;
  wrong     it says the rejected response is better (by position or by its content);
  unclear   it argues for neither identifiably (generic praise, talks about the prompt, degenerate).

Precision = correct / kept (unclear counts against the check: it passed a text that does not
support the label). Also reported: how many of the wrong ones the check caught.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from _common import DATA  # noqa: E402, I001 - puts the repository on sys.path first


def generate(args: argparse.Namespace) -> None:
    from prefdata import api
    from prefdata.engines import EngineConfig, load_engine
    from prefdata.schemas.readers import read_pairs
    from prefdata.types import SourceKind

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = read_pairs(DATA / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH, limit=args.pairs).table
    engine = load_engine(EngineConfig(backend="transformers", dtype="float32", batch_size=8))
    kept, rejects = api.apply(table, {"type": "rationale"}, engines={"policy": engine}, with_rejects=True)
    engine.close()
    records = []
    for row in kept:
        records.append({"id": row["id"], "kept": True, "verdict": "stated_chosen" if row["rationale_chosen_prob"] == 1.0
                        else "judged_chosen", "order": row["rationale_order"], "rationale": row["rationale"],
                        "chosen": row["chosen"][-1]["content"], "rejected": row["rejected"][-1]["content"]})
    for reject in rejects:
        payload = json.loads(reject["payload"]) if reject.get("payload") else {}
        records.append({"id": reject["row_id"], "kept": False, "verdict": reject["reason"], "detail": reject["detail"],
                        "order": payload.get("rationale_order"), "rationale": payload.get("rationale"),
                        "chosen": (payload.get("chosen") or [{}])[-1].get("content"),
                        "rejected": (payload.get("rejected") or [{}])[-1].get("content")})
    with (out / "rationales.jsonl").open("w") as f:
        for r in sorted(records, key=lambda r: r["id"]):
            f.write(json.dumps(r) + "\n")
    print(json.dumps(Counter(r["verdict"] for r in records)))


def score(args: argparse.Namespace) -> None:
    labels = json.loads(Path(args.score).read_text())
    records = [json.loads(line) for line in (Path(args.out) / "rationales.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["kept"]]
    counts = Counter(labels[r["id"]] for r in kept)
    wrong_all = [r for r in records if labels.get(r["id"]) == "wrong"]
    caught = sum(not r["kept"] for r in wrong_all)
    by_verdict = Counter((r["verdict"], labels.get(r["id"])) for r in records)
    print(f"{len(records)} rationales, {len(kept)} kept by the check; labels of the kept: {dict(counts)}")
    print(f"precision (correct / kept): {counts['correct'] / max(len(kept), 1):.2f}; "
          f"wrong caught: {caught} of {len(wrong_all)}")
    print(json.dumps({f"{v} / {lab}": n for (v, lab), n in sorted(by_verdict.items(), key=str)}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--out", default="out/bench_rationale")
    parser.add_argument("--score", help="labels JSON {id: correct|wrong|unclear}: print the precision")
    args = parser.parse_args()
    score(args) if args.score else generate(args)


if __name__ == "__main__":
    main()
