"""Flip-rate estimation: closed-form estimators on synthetic strengths, the stats.json contract, and
injected flips in real HH-RLHF pairs scored by the cross-fitted embedding-RM ensemble."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from prefdata.filters.noise import (
    NoiseConfig,
    NoiseFilter,
    calibrated_estimate,
    calibrated_point,
    estimate_flip_rate,
    fit_mirrored_mixture,
    moments_estimate,
    sign_estimate,
)
from prefdata.pipeline.context import CALIBRATION_KEY, BuildContext, EnginePool
from prefdata.train.config import FlipRate


def test_sign_estimate_bounds_by_the_std():
    mu = np.array([-3.0, -0.5, 0.2, 1.0, 2.0, -1.0, 4.0, 5.0, 6.0, 7.0])
    sigma = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    est = sign_estimate(mu, sigma, z=1.0)
    # mu < 0: 3 of 10; mu < -sigma: only -3 (the -1 has sigma 2, -0.5 has sigma 1)
    assert est["interval"] == [0.1, 0.3] and est["epsilon"] == pytest.approx(0.2)


def test_mirrored_mixture_recovers_a_known_flip_share():
    rng = np.random.default_rng(1)
    clean = rng.normal(2.0, 1.0, 4000)
    flipped = np.zeros(4000, bool)
    flipped[:800] = True  # 20%
    mu = np.where(flipped, -clean, clean)
    eps, m, s, posterior = fit_mirrored_mixture(mu)
    assert eps == pytest.approx(0.2, abs=0.02) and m == pytest.approx(2.0, abs=0.1) and s == pytest.approx(1.0, abs=0.1)
    assert posterior[flipped].mean() > 0.8 > 0.2 > posterior[~flipped].mean()


def test_method_of_moments_inverts_the_agreement_equation():
    # judge accuracy a = 0.9 on gold; agreement A with the dataset = 0.9 * 0.8 + 0.1 * 0.2 = 0.74 -> eps 0.2
    gold_mu = np.array([1.0] * 9 + [-1.0])
    correct = np.ones(10, bool)
    mu = np.array([1.0] * 74 + [-1.0] * 26)
    est = moments_estimate(mu, gold_mu, correct, bootstrap=50)
    assert est["epsilon"] == pytest.approx(0.2) and est["judge_accuracy"] == pytest.approx(0.9)
    assert est["interval"][0] <= 0.2 <= est["interval"][1]
    bad = moments_estimate(mu, np.array([-1.0] * 10), correct, bootstrap=10)
    assert bad["epsilon"] is None and "above 0.5" in bad["error"]


def _table(margins, prompt_ids=None) -> pa.Table:
    n = len(margins)
    return pa.table({"id": [f"p{i}" for i in range(n)], "prompt_id": prompt_ids or [f"s{i}" for i in range(n)],
                     "member_margins": margins})


def test_stage_writes_flip_prob_and_the_trainer_contract(tmp_path):
    rng = np.random.default_rng(2)
    margins = [[float(v), float(v) + 0.1] for v in np.concatenate([rng.normal(2, 1, 160), -rng.normal(2, 1, 40)])]
    margins.append([])  # unscored
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps({"key": f"s{i}", "correct": i < 160}) for i in range(0, 200, 5)))
    stage = NoiseFilter(NoiseConfig(gold_path=gold, bootstrap=50))
    ctx = BuildContext(engines=EnginePool({}))
    stage.setup(ctx)
    out = stage.process(_table(margins), ctx)
    flip_prob = out.table.column("flip_prob").to_pylist()
    assert flip_prob[-1] is None and all(0 <= p <= 1 for p in flip_prob[:-1])
    assert np.mean(flip_prob[160:200]) > 0.8 and np.mean(flip_prob[:160]) < 0.2
    estimate = out.estimates["flip_rate"]
    assert estimate["method"] == "calibrated" and estimate["n"] == 200  # the gold file gives the held-out accuracy
    assert estimate["estimators"]["calibrated"]["accuracy_source"] == "gold file"
    assert set(estimate["estimators"]) == {"sign", "mixture", "moments", "calibrated"}
    assert estimate["estimators"]["calibrated"]["epsilon"] == estimate["estimators"]["moments"]["epsilon"]
    assert estimate["epsilon"] == pytest.approx(0.2, abs=0.03)
    FlipRate.model_validate(estimate)  # what `prefdata train --epsilon auto` reads
    assert out.counters["noise_pairs_unscored"] == 1


def _simulate(rng, n, m, accuracy, eps):
    """A judge right with probability `accuracy` against the truth; labels flipped with probability eps."""
    held_out_correct = rng.random(m) < accuracy
    judge_right = rng.random(n) < accuracy
    flipped = rng.random(n) < eps
    return judge_right ^ flipped, held_out_correct  # agrees with the (possibly flipped) label


def test_calibrated_recovers_the_flip_rate_within_its_interval_in_90_percent_of_100_simulations():
    covered, errors = 0, []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        accuracy, eps = rng.uniform(0.6, 0.8), rng.uniform(0.05, 0.35)
        agree, held_out = _simulate(rng, 1000, 500, accuracy, eps)
        est = calibrated_estimate(agree, held_out, bootstrap=200, seed=seed)
        lo, hi = est["interval"]
        covered += lo <= eps <= hi
        errors.append(est["raw_epsilon"] - eps)
    assert covered >= 90
    assert abs(np.mean(errors)) < 0.02  # unbiased: the mean error over 100 runs is near 0


def test_calibrated_interval_widens_with_a_weaker_judge_and_fails_at_chance():
    rng = np.random.default_rng(0)
    strong = calibrated_estimate(*_simulate(rng, 1000, 500, 0.8, 0.2), bootstrap=100)
    weak = calibrated_estimate(*_simulate(rng, 1000, 500, 0.6, 0.2), bootstrap=100)
    width = lambda e: e["interval"][1] - e["interval"][0]  # noqa: E731
    assert width(weak) > 2 * width(strong)
    chance = calibrated_estimate(np.ones(10, bool), np.array([True, False] * 5))
    assert chance["epsilon"] is None and "above 0.5" in chance["error"]


def test_stage_uses_the_calibration_an_embedding_rm_left_in_the_context():
    """The judge is the calibrated members only (positions [1, 3) of the margin lists), not member 0."""
    rng = np.random.default_rng(4)
    agree, held_out = _simulate(rng, 600, 400, 0.7, 0.25)
    margins = [[-5.0, 1.0 if a else -1.0, 0.5 if a else -0.5] for a in agree]  # member 0 always disagrees
    ctx = BuildContext(engines=EnginePool({}))
    ctx.info[CALIBRATION_KEY] = {"correct": held_out.tolist(), "members": [1, 3], "source": "test"}
    stage = NoiseFilter(NoiseConfig(bootstrap=100))
    stage.setup(ctx)
    estimate = stage.process(_table(margins), ctx).estimates["flip_rate"]
    calibrated = estimate["estimators"]["calibrated"]
    assert estimate["method"] == "calibrated" and calibrated["accuracy_source"] == "test"
    assert calibrated["disagreement"] == pytest.approx(1 - agree.mean())
    direct = calibrated_estimate(agree, held_out, bootstrap=100, source="test")
    assert calibrated == direct  # the stage only finds the inputs of the pure function
    assert {"sign", "mixture", "calibrated"} <= set(estimate["estimators"])  # every estimator is recorded
    FlipRate.model_validate(estimate)
    without = NoiseFilter(NoiseConfig(bootstrap=20)).process(_table(margins), BuildContext(engines=EnginePool({})))
    flip = without.estimates["flip_rate"]
    assert flip["method"] == "mixture" and "no held-out accuracy" in flip["estimators"]["calibrated"]["error"]


def test_shard_estimates_combine_weighted_by_pairs():
    stage = NoiseFilter(NoiseConfig())
    shards = [{"flip_rate": {"epsilon": 0.1, "interval": [0.0, 0.2], "method": "mixture", "n": 300}},
              {"flip_rate": {"epsilon": 0.3, "interval": [0.2, 0.4], "method": "mixture", "n": 100}}]
    combined = stage.combine_estimates(shards)["flip_rate"]
    assert combined["epsilon"] == pytest.approx(0.15) and combined["interval"] == pytest.approx([0.05, 0.25])
    assert combined["n"] == 400 and "2 shards" in combined["method"]


def test_epsilon_is_clipped_below_one_half():
    margins = [[-1.0], [-2.0], [-3.0], [1.0]]
    estimate, _ = estimate_flip_rate(_table(margins), NoiseConfig(method="sign", bootstrap=10))
    assert estimate["epsilon"] < 0.5 and estimate["interval"][1] < 0.5
    FlipRate.model_validate(estimate)


@pytest.mark.realdata
def test_estimate_rises_with_injected_flips_in_real_pairs(shared_data):
    """Real HH-RLHF pairs, a known share flipped at random (nested sets), scored by the cross-fitted
    MiniLM Bradley-Terry ensemble: the estimate must move up with the injected rate."""
    from prefdata.schemas.readers import read_pairs
    from prefdata.scorers.embedding_rm import EmbeddingRewardModel, PairEmbeddings, TextEmbedder
    from prefdata.types import SourceKind

    pairs = read_pairs(shared_data / "hh_rlhf_harmless_test_1312.jsonl", kind=SourceKind.HH, limit=N_INJECT).table
    cols = pairs.to_pydict()
    embedder = TextEmbedder()
    clean = embedder.embed_pairs(cols["id"], cols["id"], cols["prompt"], cols["chosen"], cols["rejected"])
    order = np.random.default_rng(0).permutation(len(clean))
    estimates = {}
    for rate in (0.1, 0.2, 0.3):
        flip = np.zeros(len(clean), bool)
        flip[order[: round(rate * len(clean))]] = True
        noisy = PairEmbeddings(clean.ids, clean.keys, clean.prompt, np.where(flip[:, None], clean.rejected, clean.chosen),
                               np.where(flip[:, None], clean.chosen, clean.rejected))
        margins = EmbeddingRewardModel(members=5, folds=5).fit(noisy).cross_fit(noisy).margins
        estimate, _ = estimate_flip_rate(_table(margins.tolist()), NoiseConfig(bootstrap=20))
        estimates[rate] = {name: e["epsilon"] for name, e in estimate["estimators"].items()}
    assert embedder.encoded <= 3 * len(clean)  # each distinct text embedded once, reused for every rate
    mixture = [estimates[r]["mixture"] for r in (0.1, 0.2, 0.3)]
    assert mixture[0] < mixture[1] < mixture[2], estimates
    # the sign share is coarse with a weak RM (ties between neighbouring rates happen): it must not fall
    sign = [estimates[r]["sign"] for r in (0.1, 0.2, 0.3)]
    assert sign[0] <= sign[1] <= sign[2] and sign[0] < sign[2], estimates


N_INJECT = 400


def test_no_scored_pair_gives_no_estimate():
    out = NoiseFilter(NoiseConfig(bootstrap=10)).process(_table([[], [None]]), BuildContext(engines=EnginePool({})))
    assert out.estimates == {} and out.table.column("flip_prob").to_pylist() == [None, None]


def _share_within_goal(accuracy: float, repeats: int = 100, goal: float = 0.08) -> float:
    """The issue's setting: 1000 pairs, flips at 0.1/0.2/0.3, accuracy measured on 310 held-out pairs;
    everything redrawn per repeat. The share of `calibrated` estimates within `goal` of the true rate."""
    rng = np.random.default_rng(round(accuracy * 1000))
    hits = []
    for _ in range(repeats):
        right, held_out = rng.random(1000) < accuracy, rng.random(310) < accuracy
        order = rng.permutation(1000)
        for rate in (0.1, 0.2, 0.3):
            flipped = np.zeros(1000, bool)
            flipped[order[: round(rate * 1000)]] = True
            eps = calibrated_point(right ^ flipped, held_out)[0]
            hits.append(eps is not None and abs(eps - rate) <= goal)
    return float(np.mean(hits))


def test_calibrated_lands_within_0_08_per_draw_with_a_strong_judge_but_not_a_weak_one():
    """README "Which judge the goal needs": the issue's +-0.08-per-draw goal is met by the same estimator
    once the judge is strong (a = 0.8), and missed with a judge of HH's MiniLM ensemble's accuracy."""
    assert _share_within_goal(0.8) >= 0.95
    assert _share_within_goal(0.587) < 0.6
