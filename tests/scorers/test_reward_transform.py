"""Reward transform u = logsig(r - r_ref(x)) and the sum over criteria: closed-form values."""

from __future__ import annotations

import math

import pytest

from prefdata.scorers.reward_transform import (
    combine,
    logsig,
    pair_margin,
    per_prompt_references,
    quantile_reference,
    transform,
    transform_rewards,
)


def test_logsig_matches_the_definition_and_is_stable():
    for z in (-5.0, -0.3, 0.0, 0.7, 4.0):
        assert logsig(z) == pytest.approx(math.log(1 / (1 + math.exp(-z))), rel=1e-12)
    assert logsig(0.0) == pytest.approx(-math.log(2))
    assert logsig(800.0) == 0.0 and logsig(-800.0) == pytest.approx(-800.0)  # no overflow


def test_transform_is_logsig_of_the_centred_reward():
    assert transform(3.0, 1.0) == pytest.approx(math.log(1 / (1 + math.exp(-2.0))))
    assert transform(1.0, 1.0) == pytest.approx(-math.log(2))


def test_quantile_reference_interpolates():
    rewards = [4.0, 1.0, 3.0, 2.0]
    assert quantile_reference(rewards, 0.5) == pytest.approx(2.5)
    assert quantile_reference(rewards, 0.0) == 1.0 and quantile_reference(rewards, 1.0) == 4.0
    assert quantile_reference(rewards, 0.75) == pytest.approx(3.25)
    with pytest.raises(ValueError):
        quantile_reference([], 0.5)
    with pytest.raises(ValueError):
        quantile_reference(rewards, 1.5)


def test_per_prompt_references_group_by_prompt_and_skip_nulls():
    keys = ["a", "a", "b", "a", "c"]
    rewards = [1.0, 3.0, 7.0, None, None]
    assert per_prompt_references(keys, rewards, 0.5) == {"a": 2.0, "b": 7.0}  # c: no scored sample, no reference


def test_transform_rewards_by_hand():
    keys = ["a", "a", "a", "b"]
    rewards = [0.0, 2.0, 4.0, None]
    u = transform_rewards(keys, rewards, q=0.5)  # r_ref(a) = 2
    assert u[0] == pytest.approx(logsig(-2.0)) and u[1] == pytest.approx(logsig(0.0)) and u[2] == pytest.approx(logsig(2.0))
    assert u[3] is None


def test_combine_sums_criteria_and_needs_every_criterion():
    helpful = [logsig(1.0), logsig(-1.0), None]
    harmless = [logsig(-3.0), logsig(0.5), logsig(0.0)]
    combined = combine([helpful, harmless])
    assert combined[0] == pytest.approx(logsig(1.0) + logsig(-3.0))
    assert combined[1] == pytest.approx(logsig(-1.0) + logsig(0.5))
    assert combined[2] is None
    # AND-like: being excellent on one criterion does not buy back failing another.
    balanced = combine([[logsig(1.0)], [logsig(1.0)]])[0]
    lopsided = combine([[logsig(6.0)], [logsig(-4.0)]])[0]
    assert balanced > lopsided


def test_pair_margin_equals_a_pointwise_member_that_saw_only_the_pair():
    for d in (-3.0, -0.5, 0.0, 1.2, 4.0):
        for q in (0.0, 0.25, 0.5, 0.9):
            ref = quantile_reference([0.0, d], q)
            assert pair_margin(d, q) == pytest.approx(transform(d, ref) - transform(0.0, ref), abs=1e-12)
        assert pair_margin(d, 0.5) == pytest.approx(d / 2)  # logsig(a) - logsig(-a) = a
