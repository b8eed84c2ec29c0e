"""The embedding reward model: real MiniLM embeddings of real HH-RLHF pairs, Bradley-Terry heads,
cross-fitting that never scores a pair with a head that trained on it, and the build stage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from prefdata.builder import run_build
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.schemas.readers import read_pairs
from prefdata.scorers.embedding_rm import (
    EmbeddingRewardModel,
    EmbeddingRMConfig,
    EmbeddingRMStage,
    TextEmbedder,
)
from prefdata.train.config import read_flip_rate
from prefdata.types import SourceKind

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder()


@pytest.fixture(scope="module")
def hh(shared_data):
    return read_pairs(shared_data / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH, limit=60).table


def test_cross_fitting_never_scores_a_pair_with_a_head_that_saw_it(embedder, hh):
    cols = hh.to_pydict()
    keys = [f"prompt-{i // 3}" for i in range(hh.num_rows)]  # three pairs per prompt: folds are by prompt
    pairs = embedder.embed_pairs(cols["id"], keys, cols["prompt"], cols["chosen"], cols["rejected"])
    rm = EmbeddingRewardModel(members=3, folds=4, steps=20, min_train_pairs=4).fit(pairs)
    scores = rm.cross_fit(pairs)
    assert len(rm.heads) == 12 and not np.isnan(scores.chosen).any()
    key_of = dict(zip(pairs.ids, keys))
    seen_somewhere = 0
    for i, pair_id in enumerate(pairs.ids):
        for m in range(rm.members):
            head = (m, int(scores.folds[i, m]))
            assert pair_id not in rm.trained_on[head]
            assert keys[i] not in {key_of[j] for j in rm.trained_on[head]}  # nor a sibling pair of its prompt
            seen_somewhere += any(pair_id in rm.trained_on[(m, k)] for k in range(rm.folds))
    assert seen_somewhere > 0.9 * len(pairs) * rm.members  # the check is not vacuous: other heads did train on it
    # the member's score is its own head's output: recompute one directly
    head = rm.heads[(0, int(scores.folds[0, 0]))]
    from prefdata.scorers.embedding_rm import features
    direct = float(head(features(pairs.prompt[:1], pairs.chosen[:1])).detach()[0])
    assert scores.chosen[0, 0] == pytest.approx(direct, rel=1e-6)


def test_members_differ_and_heads_learn_the_training_labels(embedder, hh):
    cols = hh.to_pydict()
    pairs = embedder.embed_pairs(cols["id"], cols["id"], cols["prompt"], cols["chosen"], cols["rejected"])
    rm = EmbeddingRewardModel(members=2, folds=3, steps=200).fit(pairs)
    margins = rm.cross_fit(pairs).margins
    assert not np.allclose(margins[:, 0], margins[:, 1])
    # on its own training pairs a head ranks chosen above rejected (the Bradley-Terry fit works)
    from prefdata.scorers.embedding_rm import features
    head, seen = rm.heads[(0, 0)], sorted(rm.trained_on[(0, 0)])
    rows = [pairs.ids.index(i) for i in seen]
    fitted = head(features(pairs.prompt[rows], pairs.chosen[rows])) - head(features(pairs.prompt[rows], pairs.rejected[rows]))
    assert float((fitted > 0).float().mean()) > 0.9


def test_each_distinct_text_is_embedded_once(embedder, hh):
    cols = hh.to_pydict()
    before = embedder.encoded
    embedder.embed_pairs(cols["id"], cols["id"], cols["prompt"], cols["chosen"], cols["rejected"])
    assert embedder.encoded == before  # all cached by the earlier tests' call
    other = TextEmbedder()
    other.embed_pairs(cols["id"], cols["id"], cols["prompt"], cols["chosen"], cols["rejected"])
    distinct = set(cols["chosen"] and [m[-1]["content"] for m in cols["chosen"]]) | \
        {m[-1]["content"] for m in cols["rejected"]} | {p[-1]["content"] for p in cols["prompt"]}
    assert other.encoded == len(distinct)


def test_stage_appends_members_to_existing_lists(embedder, hh):
    table = hh.append_column("member_margins", pa.array([[9.0]] * hh.num_rows, pa.list_(pa.float64())))
    table = table.append_column("chosen_scores", pa.array([[10.0]] * hh.num_rows, pa.list_(pa.float64())))
    table = table.append_column("rejected_scores", pa.array([[1.0]] * hh.num_rows, pa.list_(pa.float64())))
    stage = EmbeddingRMStage(EmbeddingRMConfig(members=2, folds=3, steps=20))
    stage.embedder = embedder
    out = stage.process(table, BuildContext(engines=EnginePool({})))
    rows = out.table.to_pylist()
    assert all(len(r["member_margins"]) == 3 and r["member_margins"][0] == 9.0 for r in rows)
    assert all(r["chosen_scores"][0] == 10.0 and len(r["rejected_scores"]) == 3 for r in rows)
    r = rows[0]
    assert r["member_margins"][1] == pytest.approx(r["chosen_scores"][1] - r["rejected_scores"][1])
    assert r["margin"] == pytest.approx(np.mean(r["member_margins"]))  # aggregate over all members
    assert r["chosen_score"] == pytest.approx(np.mean(r["chosen_scores"]))
    assert out.estimates["embedding_rm"]["members"] == ["embedding_rm_0", "embedding_rm_1"]


def test_curation_build_writes_epsilon_and_buckets(shared_data, tmp_path):
    """embedding_rm (trained on the whole input via train_path, input in 2 shards) -> noise -> voting."""
    path = shared_data / "hh_rlhf_harmless_test_1312.jsonl"
    recipe = {"name": "curate", "source": {"path": str(path), "kind": "hh", "limit": 48},
              "stages": [{"type": "embedding_rm", "members": 3, "folds": 3, "steps": 30, "train_path": str(path),
                          "train_kind": "hh", "train_limit": 48},
                         {"type": "noise", "bootstrap": 20},
                         {"type": "voting"}],
              "output": {"dir": str(tmp_path / "out"), "shard_size": 24}}
    result = run_build(recipe)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    flip, origin = read_flip_rate(tmp_path / "out")
    assert origin.endswith("stats.json") and flip.method == "calibrated"  # one estimate over both shards
    rm = stats["estimates"]["embedding_rm"]
    assert rm["fit_pairs"] == 48 and rm["train_scored_pairs"] == 48  # one training set for both shards
    # the noise stage's `calibrated` used the RM's out-of-fold accuracy on train_path, judged by its 3 members
    estimators = stats["estimates"]["flip_rate"]["estimators"]
    calibrated = estimators["calibrated"]
    assert calibrated["accuracy_source"].startswith("embedding_rm out-of-fold on")
    assert calibrated["judge_accuracy"] == pytest.approx(rm["train_out_of_fold_accuracy"], abs=1e-6)
    assert calibrated["held_out_pairs"] == 48 and {"sign", "mixture"} <= set(estimators)
    voting = stats["stages"][2]
    # global quantiles over the 48 pairs of both shards: floor(0.2*48) = 9, floor(0.4*48) - 9 = 10
    assert voting["counters"]["bucket_incorrect"] == 9 and voting["drops"] == {"ambiguous_preference": 10}
    data = result.dataset
    assert data.num_rows == 38 and sum(data["flipped"]) == 9
    assert {"strength_mean", "strength_std", "bucket", "flip_prob", "member_margins"} <= set(data.column_names)
    assert all(len(m) == 3 for m in data["member_margins"])
