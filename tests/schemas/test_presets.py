"""Presets on small files in each public dataset's real schema (tests/schemas/preset_fixtures.py):
the first rows come out as the preset documents, bad rows become rejects with their reason."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from prefdata.builder import run_build
from prefdata.card import config_section
from prefdata.recipe import RecipeError, parse_recipe
from prefdata.schemas.presets import PRESETS
from prefdata.schemas.sources import read_one

from .preset_fixtures import FIXTURES, write_fixture


def read_preset(preset: str, tmp_path, **source):
    path = write_fixture(preset, tmp_path)
    recipe = parse_recipe({"source": {"path": str(path), "preset": preset, **source}})
    return read_one(recipe.source.spec())


def core(row: dict) -> tuple:
    return (row["prompt_id"], row["prompt"], row["chosen"], row["rejected"], row["chosen_score"], row["rejected_score"])


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def reasons(result):
    return [(r.reason.value, r.row, r.field) for r in result.rejects]


def test_every_preset_has_a_fixture_license_citation_and_fields():
    assert set(PRESETS) == set(FIXTURES) == {"ultrafeedback_binarized", "ultrafeedback", "hh_rlhf", "shp", "nectar",
                                             "skywork_preference", "oasst", "helpsteer2"}
    for preset in PRESETS.values():
        assert preset.license and preset.citation.lstrip().startswith("@") and "/" in preset.dataset
        assert set(preset.fields) == {"prompt", "chosen", "rejected", "scores"}


def test_ultrafeedback_binarized_message_lists_and_score_columns(tmp_path):
    result = read_preset("ultrafeedback_binarized", tmp_path)
    rows = result.table.to_pylist()
    assert core(rows[0]) == ("a1f3", [user("Name a prime number.")], [bot("7 is prime.")], [bot("8.")], 9.0, 3.5)
    assert rows[0]["margin"] == 5.5
    assert core(rows[1])[:2] == ("b2c4", [user("Say hi.")])
    assert reasons(result) == [("chosen_equals_rejected", 2, "rejected")]


def test_ultrafeedback_raw_best_vs_worst_by_mean_aspect_rating(tmp_path):
    result = read_preset("ultrafeedback", tmp_path)
    (row,) = result.table.to_pylist()
    assert core(row) == ("ultrafeedback-0", [user("Write a haiku about rain.")], [bot("Soft rain, grey sky, home.")],
                         [bot("Rain.")], 5.0, 1.5)
    assert row["metadata"]["chosen_index"] == 2 and row["metadata"]["rejected_index"] == 3
    assert reasons(result) == [("no_pair", 1, "completions")]  # one completion only


def test_ultrafeedback_one_aspect_by_column_override_na_is_unrated(tmp_path):
    # truthfulness: 5, N/A, 5, 2 -> the N/A completion takes no part; best is the first 5 (completion 0)
    result = read_preset("ultrafeedback", tmp_path, columns={"completion_score": "aspects.truthfulness"})
    (row,) = result.table.to_pylist()
    assert (row["chosen_score"], row["rejected_score"]) == (5.0, 2.0)
    assert row["rejected"] == [bot("Rain.")] and row["metadata"]["n_scored"] == 3


def test_hh_rlhf_transcripts(tmp_path):
    rows = read_preset("hh_rlhf", tmp_path).table.to_pylist()
    assert core(rows[0]) == ("hh_rlhf-0", [user("What is the capital of France?")], [bot("Paris.")],
                             [bot("I don't know.")], None, None)
    assert rows[1]["prompt"] == [user("Hi"), bot("Hello!"), user("Tell me a joke.")]


def test_shp_labels_pick_the_side_upvotes_are_scores_ids_per_comment_pair(tmp_path):
    result = read_preset("shp", tmp_path)
    rows = result.table.to_pylist()
    assert core(rows[0]) == ("p1/ca/cb", [user("Question of p1?")], [bot("Comment ca.")], [bot("Comment cb.")], 40.0, 10.0)
    assert core(rows[1]) == ("p1/cc/cb", [user("Question of p1?")], [bot("Comment cb.")], [bot("Comment cc.")], 12.0, 3.0)
    assert reasons(result) == [("wrong_type", 2, "labels")]


def test_nectar_ranked_answers_rank_one_vs_last(tmp_path):
    rows = read_preset("nectar", tmp_path).table.to_pylist()
    assert core(rows[0]) == ("nectar-0", [user("Give me a color.")], [bot("Teal, a calm blue-green.")], [bot("Car.")], -1.0, -3.0)
    assert rows[1]["prompt"] == [user("Hi"), bot("Hello"), user("Bye")]  # HH prompt, the trailing Assistant cue dropped
    assert core(rows[1])[2:] == ([bot("Goodbye!")], [bot("What?")], -1.0, -2.0)


def test_skywork_implicit_prompt_message_lists(tmp_path):
    rows = read_preset("skywork_preference", tmp_path).table.to_pylist()
    assert core(rows[0]) == ("skywork_preference-0", [user("Sort [3,1,2].")], [bot("[1, 2, 3]")], [bot("[3, 2, 1]")], None, None)
    assert rows[1]["prompt"] == [user("Hi"), bot("Hello"), user("Name?")] and rows[1]["rejected"] == [bot("Bob.")]


def test_oasst_message_trees_become_ranked_sibling_pairs(tmp_path):
    result = read_preset("oasst", tmp_path)
    rows = result.table.to_pylist()
    assert len(rows) == 2 and not result.rejects
    assert core(rows[0]) == ("m1", [user("How do plants eat?")],
                             [bot("By photosynthesis: light, water and CO2 become sugar.")], [bot("Plants eat dirt.")], 0.0, -2.0)
    # the second turn: the conversation from the root is the prompt; the deleted reply takes no part
    assert core(rows[1]) == ("m5", [user("How do plants eat?"), bot("By photosynthesis: light, water and CO2 become sugar."),
                                    user("And at night?")], [bot("They use stored sugar.")], [bot("They sleep.")], 0.0, -1.0)
    assert rows[1]["metadata"]["source_row"] == 4 and rows[1]["metadata"]["n_completions"] == 2


def test_helpsteer2_consecutive_responses_by_helpfulness_ties_rejected(tmp_path):
    result = read_preset("helpsteer2", tmp_path)
    rows = result.table.to_pylist()
    assert core(rows[0]) == ("helpsteer2-0", [user("What is DNA?")], [bot("Deoxyribonucleic acid, the genetic code.")],
                             [bot("A molecule.")], 4.0, 2.0)
    assert core(rows[1])[:1] == ("helpsteer2-4",)
    assert reasons(result) == [("no_pair", 2, "completions")]  # Apple vs Pear: both helpfulness 3


def test_preset_kind_conflict_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="preset 'nectar' reads kind 'completions'"):
        parse_recipe({"source": {"path": "x.parquet", "preset": "nectar", "kind": "pairs"}})
    with pytest.raises(RecipeError, match="unknown preset 'nectr'"):
        parse_recipe({"source": {"path": "x.parquet", "preset": "nectr"}})


def test_build_with_preset_records_license_and_citation_in_stats_and_card(tmp_path):
    path = write_fixture("nectar", tmp_path)
    result = run_build({"name": "nectar-small", "source": {"path": str(path), "preset": "nectar"},
                        "output": {"dir": str(tmp_path / "out")}})
    stats = result.stats
    assert stats["source"]["preset"] == "nectar" and stats["source"]["license"] == "apache-2.0"
    assert stats["source"]["rows_ok"] == 2 and stats["output"]["rows"] == 2
    out = pq.read_table(tmp_path / "out" / "data" / "train-00000.parquet")
    assert sorted(out.column("prompt_id").to_pylist()) == ["nectar-0", "nectar-1"]
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    section = config_section("default", recipe, stats, [], [])
    assert "### Source data" in section and "| nectar |" in section and "apache-2.0" in section
    assert "@misc{starling2023" in section


def test_readme_presets_table_is_the_registry():
    from tests.conftest import REPO

    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Your data\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| [`")]
    assert len(rows) == len(PRESETS)
    for line, preset in zip(rows, PRESETS.values()):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[0] == f"[`{preset.dataset}`](https://huggingface.co/datasets/{preset.dataset})"
        assert cells[1:] == [f"`{preset.name}`", preset.license, preset.fields["prompt"], preset.fields["chosen"],
                             preset.fields["rejected"], preset.fields["scores"]]
