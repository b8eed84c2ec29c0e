"""Round trip: HH-RLHF transcripts -> pair table -> Parquet build dir -> `datasets` -> TRL formats."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from prefdata.schemas import (
    SCHEMA_VERSION,
    load_dataset_dir,
    read_pairs,
    to_trl_conversational,
    to_trl_standard,
    write_parquet_atomic,
)
from prefdata.schemas.pair import schema_version_of
from prefdata.schemas.writers import shard_path

U, A = "user", "assistant"
# SmolLM2-135M-Instruct's chat template (the embedded model): a default system turn, ChatML turns.
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def msg(role, content):
    return {"role": role, "content": content}


def turn(role, content):
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


GEN = "<|im_start|>assistant\n"

EXPECTED_CONVERSATIONAL = {
    "hh-0": {
        "prompt": [msg(U, "How do I boil an egg?")],
        "chosen": [msg(A, "Put it in boiling water for about nine minutes.")],
        "rejected": [msg(A, "Eggs are for breakfast.")],
    },
    "hh-1": {
        "prompt": [msg(U, "Can you help me with a poem?"), msg(A, "Sure, what about?"), msg(U, "The sea, in café style ☕.")],
        "chosen": [msg(A, "Waves hum softly; the café hums back.")],
        "rejected": [msg(A, "No.")],
    },
    "hh-2": {
        "prompt": [msg(U, "How do I boil an egg?")],
        "chosen": [msg(A, "Simmer it gently, then cool it in cold water.")],
        "rejected": [msg(A, "I won't help with that.")],
    },
}

EXPECTED_STANDARD = {
    "hh-0": {
        "prompt": SYSTEM + turn(U, "How do I boil an egg?") + GEN,
        "chosen": "Put it in boiling water for about nine minutes.<|im_end|>\n",
        "rejected": "Eggs are for breakfast.<|im_end|>\n",
    },
    "hh-1": {
        "prompt": SYSTEM + turn(U, "Can you help me with a poem?") + turn(A, "Sure, what about?") + turn(U, "The sea, in café style ☕.") + GEN,
        "chosen": "Waves hum softly; the café hums back.<|im_end|>\n",
        "rejected": "No.<|im_end|>\n",
    },
    "hh-2": {
        "prompt": SYSTEM + turn(U, "How do I boil an egg?") + GEN,
        "chosen": "Simmer it gently, then cool it in cold water.<|im_end|>\n",
        "rejected": "I won't help with that.<|im_end|>\n",
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    import transformers

    from prefdata.engines.embedded import resolve_model

    return transformers.AutoTokenizer.from_pretrained(resolve_model(None))


def write_build_dir(table, out_dir):
    path = shard_path(out_dir, 0)
    write_parquet_atomic(table, path)
    assert path == out_dir / "data" / "train-00000.parquet"
    return path


def load_both(out_dir, path, cache_dir):
    import datasets

    via_hf = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(cache_dir))
    via_dir = load_dataset_dir(out_dir)
    return via_hf, via_dir


def test_hh_fixture_round_trip(fixtures_dir, tmp_path, tokenizer):
    result = read_pairs(fixtures_dir / "hh_small.jsonl", kind="hh")
    assert result.rejects == [] and result.table.num_rows == 3
    out = tmp_path / "build"
    path = write_build_dir(result.table, out)
    assert schema_version_of(pq.read_schema(path)) == SCHEMA_VERSION

    via_hf, via_dir = load_both(out, path, tmp_path / "hf-cache")
    assert via_hf.to_list() == via_dir.to_list() == result.table.to_pylist()
    ids = via_dir["prompt_id"]
    assert ids == ["hh-0", "hh-1", "hh-2"]

    for ds in (via_hf, via_dir):
        conv = to_trl_conversational(ds)
        assert conv.column_names == ["prompt", "chosen", "rejected"]
        assert conv.to_list() == [EXPECTED_CONVERSATIONAL[i] for i in ids]

        kept = to_trl_conversational(ds, keep_columns=True)
        assert kept.column_names == result.table.column_names
        assert kept["prompt_id"] == ids

        std = to_trl_standard(ds, tokenizer)
        assert std.column_names == ["prompt", "chosen", "rejected"]
        assert std.to_list() == [EXPECTED_STANDARD[i] for i in ids]


def test_trl_formats_from_a_pyarrow_table(fixtures_dir, tokenizer):
    table = read_pairs(fixtures_dir / "hh_small.jsonl", kind="hh").table
    assert to_trl_conversational(table).to_list() == [EXPECTED_CONVERSATIONAL[i] for i in ("hh-0", "hh-1", "hh-2")]
    assert to_trl_standard(table, tokenizer)[0] == EXPECTED_STANDARD["hh-0"]


def test_standard_without_tokenizer_uses_plain_text(fixtures_dir):
    table = read_pairs(fixtures_dir / "hh_small.jsonl", kind="hh").table
    single = table.take([0, 2])  # hh-0 and hh-2: one user turn each
    assert to_trl_standard(single).to_list() == [
        {"prompt": "How do I boil an egg?", "chosen": "Put it in boiling water for about nine minutes.", "rejected": "Eggs are for breakfast."},
        {"prompt": "How do I boil an egg?", "chosen": "Simmer it gently, then cool it in cold water.", "rejected": "I won't help with that."},
    ]
    with pytest.raises(ValueError, match="row 1, field 'prompt': 3 messages"):
        to_trl_standard(table)


def test_converters_reject_other_inputs():
    with pytest.raises(TypeError, match="pyarrow Table or datasets.Dataset"):
        to_trl_conversational([{"prompt": "x"}])
    with pytest.raises(TypeError):
        to_trl_standard({"prompt": ["x"]})


@pytest.mark.realdata
def test_real_hh_rlhf_round_trip(shared_data, tmp_path, tokenizer):
    src_path = shared_data / "hh_rlhf_harmless_test_1312.jsonl"
    source = {r["id"]: r for r in map(json.loads, src_path.read_text(encoding="utf-8").splitlines())}
    result = read_pairs(src_path, kind="hh")
    assert result.table.num_rows == 1310 and len(result.rejects) == 2

    out = tmp_path / "build"
    path = write_build_dir(result.table, out)
    assert schema_version_of(pq.read_schema(path)) == SCHEMA_VERSION
    via_hf, via_dir = load_both(out, path, tmp_path / "hf-cache")
    expected_rows = result.table.to_pylist()
    assert via_hf.to_list() == expected_rows
    assert via_dir.to_list() == expected_rows

    conv = to_trl_conversational(via_dir).to_list()
    std = to_trl_standard(via_dir, tokenizer).to_list()
    assert len(conv) == len(std) == 1310
    for row, c, s in zip(expected_rows, conv, std, strict=True):
        src = source[row["prompt_id"]]
        assert c == {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
        # The final Assistant turn of each transcript, as text.
        for side in ("chosen", "rejected"):
            # (a marker after a single newline is a turn boundary too: row 867 ends "...\nAssistant: ...")
            final = re.split(r"\n+Assistant:", src[side])[-1]
            final = final[1:] if final.startswith(" ") else final
            assert c[side][-1] == msg(A, final)
            assert s[side].endswith(final + "<|im_end|>\n")
        assert s["prompt"].startswith(SYSTEM) and s["prompt"].endswith(GEN)
        assert s["prompt"] == SYSTEM + "".join(turn(m["role"], m["content"]) for m in row["prompt"]) + GEN
        if len(row["chosen"]) == 1:
            assert s["chosen"] == row["chosen"][0]["content"] + "<|im_end|>\n"
