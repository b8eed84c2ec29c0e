"""Reward-augmented relabelling: a fixture of scored pairs gives exactly the expected 2N rows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from prefdata.generators.reward_augmented import (
    GOAL_TEMPLATE,
    RewardAugmentedConfig,
    RewardAugmentedGenerator,
    format_score,
)
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.registry import STAGES
from prefdata.schemas.pair import make_pair_id, pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE


def _user(text):
    return [{"role": "user", "content": text}]


def _bot(text):
    return [{"role": "assistant", "content": text}]


def _pair(pid, prompt, chosen, rejected, cs, rs):
    return {"id": pid, "prompt_id": f"q-{pid}", "prompt": prompt, "chosen": _bot(chosen), "rejected": _bot(rejected),
            "chosen_score": cs, "rejected_score": rs, "margin": None if cs is None or rs is None else cs - rs,
            "source": "input", "metadata": {"source_file": "f.jsonl", "source_row": 0}}


SYSTEM_PROMPT = [{"role": "system", "content": "Be brief."}, *_user("Q3")]
FIXTURE = pa.Table.from_pylist([
    _pair("p1", _user("Q1"), "good one", "bad one", 8.0, 3.5),
    _pair("p2", _user("Q2"), "same a", "same b", 5.0, 5.0),  # tie: skipped
    _pair("p3", SYSTEM_PROMPT, "great", "poor", 9.0, 2.0),  # keeps its system message
    _pair("p4", _user("Q4"), "x", "y", None, 2.0),  # null score: skipped
    _pair("p5", _user("Q5"), "lower", "higher", 4.0, 6.0),  # scores contradict the labels: skipped
    _pair("p6", _user("Q6"), "close a", "close b", 7.04, 6.96),  # both print goal 7: skipped
], schema=pair_schema(INPUT_METADATA_TYPE))


def goal(score: str) -> str:
    return GOAL_TEMPLATE.format(score=score)


def _run(config):
    stage = RewardAugmentedGenerator(config)
    return stage.run(FIXTURE, BuildContext(engines=EnginePool({})))


def _expected(config, variant):
    params = config.model_dump(mode="json")

    def prompt(base, g):
        if variant == "nosys":
            return [dict(m, content=f"{goal(g)}\n\n{m['content']}") if m["role"] == "user" else m for m in base]
        if base[0]["role"] == "system":
            return [{"role": "system", "content": f"{goal(g)}\n\nBe brief."}, *base[1:]]
        return [{"role": "system", "content": goal(g)}, *base]

    def row(pid, base, copy, g, chosen, rejected, cs, rs, ins):
        return {"id": make_pair_id(pid, "reward_augmented", params, key=copy), "prompt_id": f"q-{pid}",
                "prompt": prompt(base, g), "chosen": _bot(chosen), "rejected": _bot(rejected),
                "chosen_score": cs, "rejected_score": rs, "margin": cs - rs, "source": "reward_augmented",
                "metadata": {"source_pair_id": pid, "source": "input", "copy": copy, "goal_score": float(g),
                             "goal": g, "variant": variant, "input_chosen_score": ins[0], "input_rejected_score": ins[1]}}

    return [
        row("p1", _user("Q1"), "goal_chosen", "8", "good one", "bad one", 8.0, 3.5, (8.0, 3.5)),
        row("p1", _user("Q1"), "goal_rejected", "3.5", "bad one", "good one", 3.5, 8.0, (8.0, 3.5)),
        row("p3", SYSTEM_PROMPT, "goal_chosen", "9", "great", "poor", 9.0, 2.0, (9.0, 2.0)),
        row("p3", SYSTEM_PROMPT, "goal_rejected", "2", "poor", "great", 2.0, 9.0, (9.0, 2.0)),
    ]


@pytest.mark.parametrize("variant", ["system", "nosys"])
def test_output_equals_expected_two_copies_per_pair(variant):
    config = RewardAugmentedConfig(variant=variant)
    out, stats = _run(config)
    assert out.table.to_pylist() == _expected(config, variant)
    assert {r.row_id: r.reason.value for r in out.rejects} == {
        "p2": "tied_scores", "p4": "missing_score", "p5": "chosen_scored_lower", "p6": "tied_scores"}
    assert stats.rows_in == 6 and stats.rows_out == 4
    assert dict(stats.drops) == {"tied_scores": 2, "missing_score": 1, "chosen_scored_lower": 1}


def test_nosys_swaps_copy_b_unlike_the_authors_script():
    rows = _run(RewardAugmentedConfig(variant="nosys"))[0].table.to_pylist()
    a, b = rows[0], rows[1]
    assert a["chosen"] == b["rejected"] and a["rejected"] == b["chosen"]
    assert b["prompt"][0]["content"].startswith(goal("3.5") + "\n\nQ1")
    assert all(m["role"] != "system" for r in rows for m in r["prompt"] if r["prompt_id"] == "q-p1")


def test_ids_are_stable_distinct_and_depend_on_the_config():
    first = _run(RewardAugmentedConfig())[0].table.column("id").to_pylist()
    again = _run(RewardAugmentedConfig())[0].table.column("id").to_pylist()
    nosys = _run(RewardAugmentedConfig(variant="nosys"))[0].table.column("id").to_pylist()
    assert first == again and len(set(first)) == 4 and not set(first) & set(nosys)


def test_score_range_rescales_to_the_goal_scale():
    table = pa.Table.from_pylist([
        _pair("a", _user("Q"), "best", "worst", 2.0, 1.5),
        _pair("b", _user("Q"), "best", "worst", 2.5, 1.0),  # outside [1, 2]: rejected, not clipped
    ], schema=pair_schema(INPUT_METADATA_TYPE))
    out, _ = RewardAugmentedGenerator(RewardAugmentedConfig(score_range=(1.0, 2.0))).run(
        table, BuildContext(engines=EnginePool({})))
    rows = out.table.to_pylist()
    assert [r["metadata"]["goal"] for r in rows] == ["10", "5.5"]
    assert rows[0]["prompt"][0]["content"] == goal("10")
    assert [(r["chosen_score"], r["rejected_score"]) for r in rows] == [(10.0, 5.5), (5.5, 10.0)]
    assert [(r.row_id, r.reason.value, r.field) for r in out.rejects] == [("b", "score_out_of_range", "chosen_score")]


def test_format_and_config():
    assert [format_score(v) for v in (8.0, 7.5, 10.0, 1.25)] == ["8", "7.5", "10", "1.25"]
    assert STAGES["reward_augmented"] == (RewardAugmentedConfig, RewardAugmentedGenerator)
    with pytest.raises(ValidationError):
        RewardAugmentedConfig(template="no placeholder")
    with pytest.raises(ValidationError):
        RewardAugmentedConfig(score_range=(1, 1))
    with pytest.raises(ValidationError):
        RewardAugmentedConfig(variant="other")


@pytest.mark.realdata
def test_example_recipe_on_alpaca_eval(shared_data, tmp_path, monkeypatch):
    """examples/reward_augmented.toml: AlpacaEval best vs worst completion, rescaled, two copies each."""
    import json

    from prefdata.builder import run_build

    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    result = run_build("examples/reward_augmented.toml", limit=20, output=tmp_path / "out")
    rows = result.dataset.to_list()
    source = [json.loads(line) for line in (shared_data / "alpaca_eval_multi_200.jsonl").open()][:20]
    by_id = {r["id"]: r for r in source}
    stage = result.stats["stages"][0]
    assert len(rows) == 2 * stage["counters"]["pairs_in_kept"] and len(rows) + 2 * stage["drops"]["tied_scores"] == 40
    copies: dict[str, dict] = {}
    for row in rows:  # the build sorts rows by id: regroup the two copies of each source pair
        copies.setdefault(row["metadata"]["source_pair_id"], {})[row["metadata"]["copy"]] = row
    for pair in copies.values():
        a, b = pair["goal_chosen"], pair["goal_rejected"]
        assert (a["chosen"], a["rejected"]) == (b["rejected"], b["chosen"])
        src = by_id[a["prompt_id"]]
        prefs = {c["output"]: c["preference"] for c in src["completions"]}
        best, worst = max(prefs.values()), min(prefs.values())
        assert prefs[a["chosen"][0]["content"]] == best and prefs[a["rejected"][0]["content"]] == worst
        assert a["metadata"]["goal_score"] == round(1 + 9 * (best - 1), 1)
        assert a["prompt"][0] == {"role": "system", "content": goal(a["metadata"]["goal"])}
        assert a["prompt"][1] == {"role": "user", "content": src["instruction"]}
        assert b["prompt"][0]["content"] == goal(b["metadata"]["goal"]) and b["chosen_score"] < a["chosen_score"]
