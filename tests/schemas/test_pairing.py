"""Pairing n scored responses of one prompt: every strategy, ties, nulls, duplicates, margins."""

from __future__ import annotations

import math
import random
from itertools import permutations

import pytest

from prefdata.schemas.pairing import Pair, make_pairs
from prefdata.types import PairingStrategy

STRATEGIES = [s.value for s in PairingStrategy]
NAN = float("nan")


def texts(n):
    return [f"response {i}" for i in range(n)]


def run(scores, strategy, seed=0, texts_=None, min_margin=0.0):
    return make_pairs(scores, texts_ if texts_ is not None else texts(len(scores)), strategy, random.Random(seed), min_margin)


def check_invariants(scores, texts_, result, min_margin=0.0):
    for pair in result.pairs:
        assert scores[pair.chosen] is not None and scores[pair.rejected] is not None
        assert math.isfinite(scores[pair.chosen]) and math.isfinite(scores[pair.rejected])
        assert scores[pair.chosen] > scores[pair.rejected]
        assert scores[pair.chosen] - scores[pair.rejected] > min_margin
        assert texts_[pair.chosen].strip() != texts_[pair.rejected].strip()
    assert result.counts["pairs"] == len(result.pairs)


# --- each strategy on hand-made scores ----------------------------------------------------------


def test_max_min_pairs_best_with_worst():
    result = run([0.3, 0.9, 0.1, 0.5], "max_min")
    assert result.pairs == [Pair(1, 2, 0)]
    assert result.counts == {"pairs": 1}


def test_max_min_picks_first_of_tied_best_and_worst():
    result = run([0.1, 0.9, 0.9, 0.1, 0.5], "max_min")
    assert result.pairs == [Pair(1, 0)]


def test_max_random_pairs_best_with_a_lower_one():
    scores = [0.3, 0.9, 0.1, 0.5, 0.9]
    seen = set()
    for seed in range(40):
        result = run(scores, "max_random", seed)
        assert len(result.pairs) == 1
        pair = result.pairs[0]
        assert pair.chosen == 1
        assert pair.rejected in {0, 2, 3}  # never the other 0.9 (a tie with the best)
        seen.add(pair.rejected)
    assert seen == {0, 2, 3}  # the rejected one is drawn at random


def test_random_pairs_any_two_with_different_scores():
    scores = [1.0, 2.0, 2.0, 3.0]
    seen = set()
    for seed in range(100):
        result = run(scores, "random", seed)
        assert len(result.pairs) == 1
        pair = result.pairs[0]
        assert scores[pair.chosen] > scores[pair.rejected]
        seen.add((pair.chosen, pair.rejected))
    assert seen == {(1, 0), (2, 0), (3, 0), (3, 1), (3, 2)}  # never (1, 2) or (2, 1): a tie


def test_ranked_best_against_every_lower_one_largest_gap_first():
    scores = [0.5, 0.9, 0.1, 0.7, 0.3]
    result = run(scores, "ranked")
    assert result.pairs == [Pair(1, 2, 0), Pair(1, 4, 1), Pair(1, 0, 2), Pair(1, 3, 3)]
    gaps = [scores[p.chosen] - scores[p.rejected] for p in result.pairs]
    assert gaps == sorted(gaps, reverse=True)
    assert [p.rank for p in result.pairs] == list(range(4))
    assert result.counts["pairs"] == 4


def test_ranked_leaves_out_ties_with_the_best():
    scores = [0.9, 0.2, 0.9, 0.5]
    result = run(scores, "ranked")
    assert result.pairs == [Pair(0, 1, 0), Pair(0, 3, 1)]
    assert result.counts["ties_with_best"] == 1


def test_ranked_equal_lower_scores_both_paired_in_index_order():
    result = run([0.1, 0.9, 0.1], "ranked")
    assert result.pairs == [Pair(1, 0, 0), Pair(1, 2, 1)]


# --- rules shared by every strategy -------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_tied_gives_no_pair(strategy):
    result = run([0.5, 0.5, 0.5], strategy)
    assert result.pairs == []
    assert result.counts["no_pair_all_tied"] == 1
    assert result.counts["pairs"] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_response_gives_no_pair(strategy):
    result = run([0.7], strategy)
    assert result.pairs == []
    assert result.counts["no_pair_too_few_scored"] == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_responses_gives_no_pair(strategy):
    result = run([], strategy)
    assert result.pairs == []
    assert result.counts["no_pair_too_few_scored"] == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("bad", [None, NAN, float("inf"), float("-inf")])
def test_null_and_nan_scores_never_paired_and_counted(strategy, bad):
    scores = [bad, 0.5, bad, 0.2]
    for seed in range(10):
        result = run(scores, strategy, seed)
        assert result.counts["null_scores"] == 2
        assert [(p.chosen, p.rejected) for p in result.pairs] == [(1, 3)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_only_one_scored_response_left(strategy):
    result = run([None, NAN, 0.4], strategy)
    assert result.pairs == []
    assert result.counts["null_scores"] == 2
    assert result.counts["no_pair_too_few_scored"] == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_texts_count_once(strategy):
    # Same text (up to surrounding whitespace) with different scores: only the first one counts.
    texts_ = ["Paris.", " Paris.\n", "London."]
    scores = [0.2, 0.9, 0.1]
    for seed in range(10):
        result = run(scores, strategy, seed, texts_)
        assert result.counts["duplicate_responses"] == 1
        assert [(p.chosen, p.rejected) for p in result.pairs] == [(0, 2)]
        check_invariants(scores, texts_, result)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_identical_texts_give_no_pair(strategy):
    result = run([0.1, 0.9, 0.5], strategy, texts_=["same"] * 3)
    assert result.pairs == []
    assert result.counts["duplicate_responses"] == 2
    assert result.counts["no_pair_too_few_scored"] == 1


def test_duplicate_of_a_null_scored_text_is_still_used():
    result = run([None, 0.9, 0.1], "max_min", texts_=["a", "a", "b"])
    assert result.pairs == [Pair(1, 2)]
    assert result.counts["null_scores"] == 1 and result.counts["duplicate_responses"] == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_min_margin(strategy):
    scores = [0.0, 0.25, 0.5, 1.0]
    for seed in range(20):
        result = run(scores, strategy, seed, min_margin=0.5)
        check_invariants(scores, texts(4), result, min_margin=0.5)
        assert result.pairs  # 1.0 - 0.0 and 1.0 - 0.25 clear the margin
        for p in result.pairs:
            assert (p.chosen, p.rejected) in {(3, 0), (3, 1)}
    # a gap equal to the margin is not enough
    result = run([0.0, 0.5], strategy, min_margin=0.5)
    assert result.pairs == [] and result.counts["no_pair_all_tied"] == 1
    assert run([0.0, 0.5], strategy, min_margin=0.49).pairs == [Pair(1, 0)]


def test_ranked_min_margin_keeps_only_wide_gaps():
    result = run([1.0, 0.1, 0.8, 0.5], "ranked", min_margin=0.3)
    assert result.pairs == [Pair(0, 1, 0), Pair(0, 3, 1)]
    assert result.counts["ties_with_best"] == 1  # 0.8 is within the margin of the best


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chosen_beats_rejected_on_many_random_groups(strategy):
    gen = random.Random(1234)
    for _ in range(200):
        n = gen.randint(0, 8)
        scores = [gen.choice([None, NAN, 0.0, 0.5, 1.0, gen.random()]) for _ in range(n)]
        texts_ = [gen.choice(["a", "b", "c", "d", "e", "f", " a"]) for _ in range(n)]
        result = run(scores, strategy, gen.randint(0, 10**6), texts_)
        check_invariants(scores, texts_, result)
        if strategy != "ranked":
            assert len(result.pairs) <= 1
        assert result.counts["null_scores"] == sum(s is None or not math.isfinite(s) for s in scores)
        assert (result.counts["no_pair_too_few_scored"] + result.counts["no_pair_all_tied"] == 1) == (not result.pairs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic_for_a_seed(strategy):
    scores = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2, 0.8]
    first = [run(scores, strategy, seed).pairs for seed in range(30)]
    again = [run(scores, strategy, seed).pairs for seed in range(30)]
    assert first == again


def test_strategy_names_and_enum_are_accepted():
    for strategy in PairingStrategy:
        assert run([0.1, 0.9], strategy).pairs == run([0.1, 0.9], strategy.value).pairs == [Pair(1, 0)]
    with pytest.raises(ValueError):
        run([0.1, 0.9], "best_of_n")


def test_texts_and_scores_must_align():
    with pytest.raises(ValueError):
        make_pairs([0.1, 0.2], ["a"], "max_min", random.Random(0))


def test_order_of_responses_does_not_change_max_min_choice():
    scores = [0.2, 0.8, 0.5]
    for order in permutations(range(3)):
        s = [scores[i] for i in order]
        t = [f"r{i}" for i in order]
        pair = run(s, "max_min", texts_=t).pairs[0]
        assert (t[pair.chosen], t[pair.rejected]) == ("r1", "r0")
