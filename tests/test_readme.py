"""The README's "Use with TRL" code block runs as written on a small build, with one substitution:
`model_id` points at a tiny random Llama (SmolLM2's tokenizer) so the block trains in seconds on CPU.
The README's recipe examples (TOML blocks) are valid recipes with the values their text gives."""

from __future__ import annotations

import math
import re
import tomllib

import pytest

from prefdata.builder import run_build
from prefdata.recipe import parse_recipe

from .conftest import FIXTURES, REPO


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, f"expected one python block under '## {heading}'"
    return blocks[0]


@pytest.fixture
def tiny_model(tmp_path, hf_engine):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = hf_engine.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_use_with_trl_block_trains(tmp_path, tiny_model, monkeypatch):
    code = readme_block("Use with TRL")
    model_line = re.compile(r"^model_id = .*$", re.MULTILINE)
    assert len(model_line.findall(code)) == 1
    code = model_line.sub(f"model_id = {str(tiny_model)!r}", code)
    monkeypatch.chdir(tmp_path)  # the block reads out/quickstart and writes out/dpo, relative paths
    run_build({"name": "quickstart", "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs", "limit": 4},
               "output": {"dir": "out/quickstart", "shard_size": 4}})
    namespace: dict = {}
    exec(compile(code, str(REPO / "README.md"), "exec"), namespace)
    trainer = namespace["trainer"]
    assert len(namespace["train"]) == 4
    assert trainer.state.global_step == 3  # 3 epochs (TRL's default) of one batch of 4
    summary = trainer.state.log_history[-1]
    assert summary["train_loss"] == pytest.approx(math.log(2), abs=0.01)  # a random policy starts as its reference
    assert (tmp_path / "out" / "dpo").is_dir()


def readme_toml_blocks(heading: str) -> list[str]:
    """The ```toml blocks of the README section under `heading` ("## X" or "### X"), up to the next
    heading of the same or a higher level (TOML comments start with "# ", never "## ")."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    section = text.split(f"{heading}\n", 1)[1]
    section = re.split(rf"\n#{{2,{len(level)}}} ", section, maxsplit=1)[0]
    return re.findall(r"```toml\n(.*?)```", section, re.DOTALL)


A_SOURCE = {"source": {"path": "pairs.jsonl", "kind": "pairs"}}  # for a block that shows another table only


def test_readme_push_example_is_a_valid_recipe_table():
    (block,) = readme_toml_blocks("## Inspect and publish")
    data = tomllib.loads(block)
    assert set(data) == {"push"}
    push = parse_recipe({**A_SOURCE, **data}, "README [push]").push
    assert (push.repo_id, push.license, push.test_size) == ("me/quickstart-pairs", "apache-2.0", 0.1)


def test_readme_recipe_example_is_a_valid_recipe(monkeypatch):
    monkeypatch.delenv("PREFDATA_DATA", raising=False)
    (block,) = readme_toml_blocks("## Recipes")
    recipe = parse_recipe(tomllib.loads(block), "README ## Recipes")
    assert recipe.name == "quickstart" and recipe.seed == 0
    source = recipe.source
    assert str(source.path).endswith("shared/data/oasst_prompt_lottery_150.jsonl") and "$" not in str(source.path)
    assert (source.kind.value, source.format.value, source.limit, source.columns.prompt) == ("prompts", "auto", 16, "prompt")
    assert recipe.engines["policy"].backend.value == "vllm"
    (stage,) = recipe.stages
    assert (stage.type, stage.n, stage.strategy.value) == ("on_policy", 4, "max_min")
    assert (stage.sampling.temperature, stage.sampling.max_tokens, stage.scorer.type) == (0.8, 128, "judge")
    assert recipe.output.shard_size == 256


def test_readme_hub_source_example_is_a_valid_recipe():
    (block,) = readme_toml_blocks("### Curate a public dataset")
    recipe = parse_recipe(tomllib.loads(block), "README ### Curate a public dataset")
    source = recipe.source
    assert (source.hub, source.preset, source.split, source.streaming, source.limit) == \
        ("berkeley-nest/Nectar", "nectar", "train", True, 512)
    assert source.path is None and [s.type for s in recipe.stages] == ["dedup"]


def test_readme_mixing_example_is_a_valid_recipe():
    (block,) = readme_toml_blocks("### Mixing sources")
    recipe = parse_recipe(tomllib.loads(block), "README ### Mixing sources")
    assert recipe.source is None
    hub, mine = recipe.sources
    assert (hub.hub, hub.preset, hub.weight, hub.source_name()) == \
        ("HuggingFaceH4/ultrafeedback_binarized", "ultrafeedback_binarized", 3, "ultrafeedback_binarized")
    assert (str(mine.path), mine.kind.value, mine.source_name(), mine.limit, mine.weight) == \
        ("my_pairs.parquet", "pairs", "mine", 10000, 1)


def test_readme_epsilon_auto_examples_train_on_a_build_with_a_noise_stage():
    """`--epsilon auto` reads estimates.flip_rate, which only a `noise` stage writes: every README command
    that uses it must train on the output of a recipe the README builds with one."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    built = {out: recipe for recipe, out in re.findall(r"prefdata build (\S+\.toml) -o (\S+)", text)}
    uses = re.findall(r"prefdata train (\S+) [^\n]*--epsilon auto", text)
    assert uses
    for folder in uses:
        assert folder in built, f"README trains on {folder} with --epsilon auto but never builds it"
        stages = tomllib.loads((REPO / built[folder]).read_text())["stages"]
        assert any(stage["type"] == "noise" for stage in stages), f"{built[folder]} has no noise stage"
