"""Dedup and decontamination: planted exact duplicates, near duplicates (real MiniLM embeddings) and
benchmark questions are found, the kept row is named, and nothing else is dropped."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from prefdata.filters.dedup import DedupConfig, DedupStage, near_duplicates, normalise, prompt_key
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.registry import STAGES
from prefdata.schemas.errors import InputError

from ..conftest import FIXTURES


def _prompts(texts: list[str], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"p{i}" for i in range(len(texts))]
    return pa.Table.from_pylist([{"id": i, "prompt": [{"role": "user", "content": t}]} for i, t in zip(ids, texts)])


@pytest.fixture(scope="module")
def embedder():
    from prefdata.filters.dedup import load_embedder

    return load_embedder("embedded:all-minilm-l6-v2")


def _run(table, embedder=None, **config):
    stage = DedupStage(DedupConfig(**config))
    stage.embedder = embedder
    ctx = BuildContext(engines=EnginePool({}))
    stage.setup(ctx)
    return stage.run(table, ctx)


def _dropped(out) -> dict[str, tuple[str, str]]:
    return {r.row_id: (r.reason.value, r.detail) for r in out.rejects}


def test_planted_duplicates_and_contamination(embedder):
    gsm = [json.loads(line)["question"] for line in (FIXTURES / "gsm8k_small.jsonl").read_text().splitlines()]
    texts = [
        "How do I boil an egg?",  # p0
        "Write a haiku about autumn leaves.",  # p1
        "HOW do I boil   an egg",  # p2: exact duplicate of p0 after normalisation
        "Write a haiku about the leaves in autumn.",  # p3: near duplicate of p1
        "How do I fry an egg?",  # p4: related, not a duplicate
        f"Solve this problem step by step: {gsm[0]}",  # p5: contaminated (the question is 14 words: two 13-grams)
        "Tom has 3 apples. What colour are they?",  # p6: shares words with gsm[0], not a 13-gram
        "Give me three tips for staying healthy.",  # p7
    ]
    out, stats = _run(_prompts(texts), embedder, benchmarks=[str(FIXTURES / "gsm8k_small.jsonl")])
    dropped = _dropped(out)
    assert set(dropped) == {"p2", "p3", "p5"}
    assert dropped["p2"] == ("exact_duplicate", "duplicate of id p0")
    assert dropped["p3"][0] == "near_duplicate" and dropped["p3"][1].startswith("duplicate of id p1 (cosine 0.9")
    assert dropped["p5"] == ("contaminated", "shares 2 13-gram(s) with gsm8k_small.jsonl row 0")
    assert out.table.column("id").to_pylist() == ["p0", "p1", "p4", "p6", "p7"]
    assert stats.drops == {"exact_duplicate": 1, "near_duplicate": 1, "contaminated": 1}
    assert json.loads(out.rejects[0].payload)["prompt"][0]["role"] == "user"


def test_threshold_is_configurable(embedder):
    texts = ["How do I boil an egg?", "How do I fry an egg?"]  # cosine ~0.79
    assert _run(_prompts(texts), embedder)[0].table.num_rows == 2
    out, _ = _run(_prompts(texts), embedder, near_threshold=0.7)
    assert [(r.row_id, r.reason.value) for r in out.rejects] == [("p1", "near_duplicate")]
    assert out.rejects[0].detail.startswith("duplicate of id p0 (cosine 0.7")


def test_pairs_of_one_prompt_are_not_duplicates():
    """Several pairs of one prompt (one prompt_id) stay; another prompt_id with the same text goes."""
    prompt = [{"role": "user", "content": "Name a colour."}]
    rows = [{"id": f"r{i}", "prompt_id": pid, "prompt": prompt, "chosen": [{"role": "assistant", "content": c}]}
            for i, (pid, c) in enumerate([("a", "Red"), ("a", "Blue"), ("b", "Green"), ("b", "Teal"), ("c", "Gold")])]
    rows[4]["prompt"] = [{"role": "user", "content": "Name a metal."}]
    out, stats = _run(pa.Table.from_pylist(rows), near_threshold=None)
    assert out.table.column("id").to_pylist() == ["r0", "r1", "r4"]
    assert _dropped(out) == {"r2": ("exact_duplicate", "duplicate of id r0"), "r3": ("exact_duplicate", "duplicate of id r0")}
    assert stats.counters["dedup_prompts"] == 3


def test_greedy_chain_keeps_the_ends():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3)])
    c = np.array([np.cos(0.6), np.sin(0.6)])
    vectors = np.stack([a, b, c, a]).astype(np.float32)
    threshold = float(np.cos(0.35))  # a~b, b~c, a!~c
    for block in (1, 2, 1024):  # same answer across block boundaries
        found = near_duplicates(vectors, threshold, block=block)
        assert {k: v[0] for k, v in found.items()} == {1: 0, 3: 0}


def test_normalisation_and_key():
    assert normalise("  Héllo,\tWORLD!! ") == "héllo world"
    same = [{"role": "user", "content": "What is 2+2?"}]
    assert prompt_key(same) == prompt_key([{"role": "user", "content": "what is 2 + 2"}])
    assert prompt_key(same) != prompt_key([{"role": "system", "content": "What is 2+2?"}])


def test_bad_benchmark_file_names_file_and_row(tmp_path):
    bad = tmp_path / "bench.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": 3}\n')
    with pytest.raises(InputError, match=r"bench.jsonl: row 1: no string field"):
        _run(_prompts(["x"]), near_threshold=None, exact=False, benchmarks=[str(bad)])
    with pytest.raises(InputError, match="not found"):
        _run(_prompts(["x"]), near_threshold=None, benchmarks=[str(tmp_path / "missing.jsonl")])


def test_registered_and_whole_input_unless_per_shard():
    assert STAGES["dedup"] == (DedupConfig, DedupStage)
    assert DedupStage(DedupConfig(near_threshold=None)).whole_input
    assert not DedupStage(DedupConfig(near_threshold=None, per_shard=True)).whole_input


def _planted(n: int = 3000, dim: int = 48, seed: int = 1) -> tuple[np.ndarray, set[int]]:
    """Clustered unit vectors (related at cosine ~0.7, not duplicates) with planted near copies
    (cosine ~0.99), some of them copies of copies (chains), and a few exact repeats."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 30, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    planted = set()
    for row in sorted(rng.choice(np.arange(1, n), size=n // 20, replace=False)):
        source = int(rng.integers(0, row))
        vectors[row] = vectors[source] + (0.0 if row % 9 == 0 else 0.02) * rng.standard_normal(dim).astype(np.float32) * np.linalg.norm(vectors[source])
        planted.add(int(row))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), planted


def test_ann_dedup_equals_the_exact_scan_on_planted_duplicates():
    from prefdata.filters.dedup import near_duplicates_ann

    vectors, planted = _planted()
    exact = near_duplicates(vectors, 0.95)
    ann = near_duplicates_ann(vectors, 0.95, k=8)
    assert len(set(exact) & planted) >= 0.95 * len(planted)
    assert {i: kept for i, (kept, _) in ann.items()} == {i: kept for i, (kept, _) in exact.items()}
    for i, (_, cosine) in ann.items():
        assert cosine == pytest.approx(exact[i][1], abs=1e-5)


def test_ann_saturated_neighbour_lists_fall_back_to_the_kept_set():
    """Twenty copies of one vector: with k=4 every list is full of dropped copies, yet each copy
    is named a duplicate of the first (kept) vector, as the exact scan says."""
    from prefdata.filters.dedup import near_duplicates_ann

    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 16)).astype(np.float32)
    vectors = np.concatenate([base, np.repeat(base[:1], 20, axis=0)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = near_duplicates_ann(vectors, 0.99, k=4)
    assert {i: kept for i, (kept, _) in ann.items()} == {i: kept for i, (kept, _) in near_duplicates(vectors, 0.99).items()}
    assert {kept for kept, _ in ann.values()} == {0}


@pytest.mark.realdata
def test_real_prompts_with_planted_rows(shared_data, embedder):
    """60 AlpacaEval prompts (no duplicates among them) plus planted copies, rewordings and GSM8K
    test questions: exactly the planted rows go, each naming its source."""
    alpaca = [json.loads(line) for line in (shared_data / "alpaca_eval_prompts_500.jsonl").read_text().splitlines()[:60]]
    gsm = [json.loads(line) for line in (shared_data / "gsm8k_test_300.jsonl").read_text().splitlines()[:40]]
    texts = [r["instruction"] for r in alpaca]
    ids = [r["id"] for r in alpaca]
    planted = {
        "copy-3": (texts[3].upper() + " !!", "exact_duplicate", ids[3]),
        "reword-7": (texts[7].rstrip(".?!") + ", please.", "near_duplicate", ids[7]),
        "reword-20": ("Hey, " + texts[20], "near_duplicate", ids[20]),
        "gsm-5": (f"Question: {gsm[5]['question']}\nAnswer with a number.", "contaminated", "gsm8k_test_300.jsonl row 5"),
        "gsm-30": (gsm[30]["question"].replace("  ", " ").lower(), "contaminated", "gsm8k_test_300.jsonl row 30"),
    }
    table = _prompts(texts + [t for t, _, _ in planted.values()], ids + list(planted))
    out, stats = _run(table, embedder, benchmarks=[str(shared_data / "gsm8k_test_300.jsonl")])
    dropped = _dropped(out)
    assert set(dropped) == set(planted)
    for row_id, (_, reason, source) in planted.items():
        assert dropped[row_id][0] == reason and source in dropped[row_id][1]
    assert out.table.num_rows == 60


def test_stage_switches_to_the_ann_index_above_exact_scan_max(embedder, monkeypatch):
    """The stage's own switch (README: above `exact_scan_max` the IVF index, 16 probes, 16 neighbours):
    the same verdicts as the exact scan, from the ANN path with the stage's defaults."""
    import prefdata.filters.dedup as dedup

    calls = []
    real = dedup.near_duplicates_ann
    monkeypatch.setattr(dedup, "near_duplicates_ann", lambda *a: calls.append(a[1:]) or real(*a))
    texts = ["How do I boil an egg?", "Write a haiku about autumn leaves.", "How do I fry an egg?",
             "Write a haiku about the leaves in autumn.", "Give me three tips for staying healthy."]
    exact, _ = _run(_prompts(texts), embedder)
    assert calls == []  # 5 vectors: the exact scan
    ann, _ = _run(_prompts(texts), embedder, exact_scan_max=2)
    assert calls == [(0.95, 16, 16)]  # near_threshold, ann_neighbours, ann_probes: the defaults
    assert _dropped(ann) == _dropped(exact) and _dropped(ann)["p3"][0] == "near_duplicate"
