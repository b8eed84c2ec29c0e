"""The README's "Use with TRL" code block runs as written on a small build, with one substitution:
`model_id` points at a tiny random Llama (SmolLM2's tokenizer) so the block trains in seconds on CPU."""

from __future__ import annotations

import math
import re

import pytest

from prefdata.builder import run_build

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
