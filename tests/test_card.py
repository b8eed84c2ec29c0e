"""The dataset card's label-noise section lists the primary flip-rate estimate and every estimator."""

from __future__ import annotations

from prefdata.card import config_section


def test_card_lists_each_flip_rate_estimator():
    stats = {"estimates": {"flip_rate": {
        "epsilon": 0.21, "interval": [0.15, 0.3], "method": "mixture", "n": 400,
        "estimators": {"sign": {"epsilon": 0.33, "interval": [0.2, 0.4], "method": "sign"},
                       "mixture": {"epsilon": 0.21, "interval": [0.15, 0.3], "method": "mixture"},
                       "moments": {"epsilon": None, "interval": None, "method": "moments", "error": "accuracy 0.4"}}}}}
    body = config_section("default", {"name": "curate"}, stats, [], [])
    assert "ε = 0.21, interval [0.15, 0.3] (method: mixture)" in body
    assert "  - `sign`: ε = 0.33, interval [0.2, 0.4]" in body
    assert "  - `moments`: ε = n/a (accuracy 0.4)" in body
