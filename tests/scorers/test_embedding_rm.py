"""The embedding reward model: real MiniLM embeddings of real HH-RLHF pairs, Bradley-Terry heads,
cross-fitting that never scores a pair with a head that trained on it, and the build stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def curation_recipe(path, out) -> dict:
    """embedding_rm (trained on the whole input via train_path, input in 2 shards) -> noise -> voting."""
    return {"name": "curate", "source": {"path": str(path), "kind": "hh", "limit": 48},
            "stages": [{"type": "embedding_rm", "members": 3, "folds": 3, "steps": 30, "train_path": str(path),
                        "train_kind": "hh", "train_limit": 48},
                       {"type": "noise", "bootstrap": 20},
                       {"type": "voting"}],
            "output": {"dir": str(out), "shard_size": 24}}


@pytest.fixture(scope="module")
def curated(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "out"
    return out, run_build(curation_recipe(shared_data / "hh_rlhf_harmless_test_1312.jsonl", out))


def test_curation_build_writes_epsilon_and_buckets(curated):
    out, result = curated
    tmp_path = out.parent
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


KILLED_BUILD = """
import json, sys
from prefdata.builder import run_build
run_build(json.loads(sys.argv[1]))
"""


def flip_rate(out) -> dict:
    return json.loads((out / "stats.json").read_text())["estimates"]["flip_rate"]


def test_resumed_and_ray_builds_give_the_noise_fit_the_rm_calibration(shared_data, curated, tmp_path):
    """The noise fit reads the RM's held-out accuracy from the RM's fit (`publish`), not from state its
    apply left in one process: a build killed after every embedding_rm apply, before the noise fit,
    resumes with the uninterrupted build's estimate, and so does Ray (its fits run on the driver)."""
    reference = flip_rate(curated[0])
    assert reference["method"] == "calibrated"
    recipe = curation_recipe(shared_data / "hh_rlhf_harmless_test_1312.jsonl", tmp_path / "resumed")
    env = {**os.environ, "PREFDATA_KILL_AT": "stage_done:2"}  # both shards' embedding_rm applied, noise not fitted
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, json.dumps(recipe)], env=env, capture_output=True,
                            text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_build(recipe)
    assert resumed.stats["resumed"] == {"shards": 0, "stages": 2}  # the RM's applies came from checkpoints
    assert flip_rate(tmp_path / "resumed") == reference
    ray = curation_recipe(shared_data / "hh_rlhf_harmless_test_1312.jsonl", tmp_path / "ray")
    ray["executor"] = {"kind": "ray", "local_num_cpus": 2}
    run_build(ray)
    assert flip_rate(tmp_path / "ray") == reference
