"""Recipe files (prefdata/recipe.py): TOML or YAML (.yaml, .yml) read into the same typed recipe;
an empty file or a misspelt key is an error that names the file and the key."""

from __future__ import annotations

import pytest

from prefdata.recipe import RecipeError, load_recipe

RECIPE_TOML = """\
name = "both"
seed = 3

[source]
path = "prompts.jsonl"
kind = "prompts"
limit = 16
[source.columns]
prompt = "question"
reference = "answer"

[engines.policy]
backend = "transformers"

[[stages]]
type = "on_policy"
n = 4
strategy = "max_min"
[stages.sampling]
temperature = 0.8
max_tokens = 128
[stages.scorer]
type = "verifier"

[[stages]]
type = "dedup"

[output]
shard_size = 256
"""

RECIPE_YAML = """\
name: both
seed: 3
source:
  path: prompts.jsonl
  kind: prompts
  limit: 16
  columns:
    prompt: question
    reference: answer
engines:
  policy:
    backend: transformers
stages:
  - type: on_policy
    n: 4
    strategy: max_min
    sampling:
      temperature: 0.8
      max_tokens: 128
    scorer:
      type: verifier
  - type: dedup
output:
  shard_size: 256
"""


def test_a_recipe_is_a_toml_or_yaml_file_read_the_same(tmp_path):
    (tmp_path / "r.toml").write_text(RECIPE_TOML, encoding="utf-8")
    (tmp_path / "r.yaml").write_text(RECIPE_YAML, encoding="utf-8")
    (tmp_path / "r.yml").write_text(RECIPE_YAML, encoding="utf-8")
    from_toml = load_recipe(tmp_path / "r.toml")
    assert from_toml.seed == 3 and from_toml.source.columns.prompt == "question"
    assert [s.type for s in from_toml.stages] == ["on_policy", "dedup"] and from_toml.stages[0].sampling.max_tokens == 128
    for name in ("r.yaml", "r.yml"):
        from_yaml = load_recipe(tmp_path / name)
        assert from_yaml == from_toml, name
        assert from_yaml.resolved() == from_toml.resolved(), name


@pytest.mark.parametrize("content", ["", "\n", "# nothing but a comment\n"])
def test_an_empty_yaml_recipe_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RecipeError, match=r"empty\.yaml: the recipe is empty; a recipe must be a table/mapping") as info:
        load_recipe(path)
    assert "\n" not in str(info.value)


def test_a_misspelt_key_in_yaml_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.yml"
    path.write_text(RECIPE_YAML.replace("    prompt: question", "    promt: question").replace("seed: 3", "seeed: 3"),
                    encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "typo.yml: source.columns.promt: Extra inputs are not permitted" in message
    assert "typo.yml: seeed: Extra inputs are not permitted" in message
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad\.yaml: not valid yaml"):
        load_recipe(bad)
