"""The dataset card: the label-noise section lists the primary flip-rate estimate and every
estimator; the methods it cites are the ones stats.json recorded when the build ran."""

from __future__ import annotations

from dataclasses import asdict

from prefdata.card import SplitInfo, config_section, method_citations, render_card
from prefdata.generators.on_policy import CITATION as ON_POLICY_CITATION
from prefdata.recipe import parse_recipe
from prefdata.registry import make_stage
from prefdata.scorers.judge import CITATION as JUDGE_CITATION


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


def _card(recipe, stats):
    splits = [SplitInfo("train", rows=1, num_bytes=10, download_bytes=10, files=("data/train-00000.parquet",))]
    return render_card(repo_id="tester/x", config_name="default", recipe=recipe, stats=stats, features=None,
                       splits=splits, license="mit", tags=[], task_categories=["text-generation"], pretty_name=None)


def test_card_cites_the_methods_recorded_at_build_time_not_the_registry():
    recipe = {"source": {"path": "x.jsonl"}, "stages": [{"type": "on_policy", "scorer": {"type": "judge"}}]}
    stages = [make_stage(config) for config in parse_recipe(recipe).stages]  # what the builder records
    stats = {"methods": [asdict(m) for m in method_citations(stages)]}
    # recipe.json names a stage today's registry does not know: the card still cites what ran
    card = _card({"name": "x", "stages": [{"type": "renamed_since"}]}, stats)
    assert ON_POLICY_CITATION in card and JUDGE_CITATION in card
    assert "- `on_policy` (stage):" in card and "- `judge` (scorer):" in card
    assert "### Methods" not in _card({"name": "x", "stages": recipe["stages"]}, {})  # nothing recorded, nothing cited
