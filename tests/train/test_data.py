"""The data path: tokenise, collate, holdout split, rejects with reasons, edit-span weights, the
rationale prompt, and the `--epsilon auto` contract."""

from __future__ import annotations

import json

import pytest

import prefdata
from prefdata.engines.chat import ChatFormatter
from prefdata.schemas.formats import rationale_prompt, tokenize_pair
from prefdata.train.config import TrainConfig, TrainError, read_flip_rate
from prefdata.train.data import (
    EncodeSpec,
    collate,
    encode_pairs,
    in_holdout,
    load_pairs,
)

PROMPT = [{"role": "user", "content": "What is 12 times 12?"}]
CHOSEN = [{"role": "assistant", "content": "12 times 12 is 144. That is a dozen dozens."}]
REJECTED = [{"role": "assistant", "content": "12 times 12 is 124."}]


def _row(i=0, **extra):
    return {"id": f"r{i}", "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED, **extra}


def test_tokenize_pair_splits_like_the_chat_template(smol_tokenizer):
    formatter = ChatFormatter(smol_tokenizer)
    prompt_ids, chosen_ids, rejected_ids = tokenize_pair(formatter, PROMPT, CHOSEN, REJECTED)
    assert prompt_ids == formatter.prompt_ids(PROMPT)  # generation prompt included
    assert prompt_ids + chosen_ids == formatter.conversation_ids(PROMPT + CHOSEN)
    assert prompt_ids + rejected_ids == formatter.conversation_ids(PROMPT + REJECTED)
    assert smol_tokenizer.decode(chosen_ids) == CHOSEN[0]["content"] + "<|im_end|>\n"


def test_collate_layout(smol_tokenizer):
    encoded = encode_pairs([_row(0, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0),
                            _row(1, ref_chosen_logps=-3.0, ref_rejected_logps=-4.0,
                                 prompt=[{"role": "user", "content": "A much longer question about multiplication tables?"}])],
                           smol_tokenizer, EncodeSpec(ref_columns=True))
    a, b = encoded.examples
    batch = collate([a, b], pad_id=smol_tokenizer.pad_token_id)
    ids, mask, weights = batch["input_ids"], batch["attention_mask"], batch["loss_weights"]
    assert ids.shape == (4, max(len(b.prompt_ids) + len(b.chosen_ids), len(a.prompt_ids) + len(a.chosen_ids)))
    # rows: chosen a, chosen b, rejected a, rejected b; right padded
    assert ids[0, : len(a.prompt_ids) + len(a.chosen_ids)].tolist() == a.prompt_ids + a.chosen_ids
    assert ids[3, : len(b.prompt_ids) + len(b.rejected_ids)].tolist() == b.prompt_ids + b.rejected_ids
    assert mask[2].sum() == len(a.prompt_ids) + len(a.rejected_ids)
    assert weights[0, : len(a.prompt_ids)].sum() == 0 and weights[0].sum() == len(a.chosen_ids)
    assert batch["lengths"].tolist() == [len(a.chosen_ids), len(b.chosen_ids), len(a.rejected_ids), len(b.rejected_ids)]
    assert batch["first_response"] == min(len(a.prompt_ids), len(b.prompt_ids))
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -3.0] and batch["n_pairs"] == 2
    assert "margin" not in batch and len(batch["rationale_pairs"]) == 0


def test_rows_that_cannot_be_used_are_rejected_with_row_id_and_field(smol_tokenizer):
    rows = [_row(0, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0, margin=1.0),
            _row(1, ref_chosen_logps=None, ref_rejected_logps=-2.0, margin=1.0),
            _row(2, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0, margin=None),
            _row(3, ref_chosen_logps=-1.0, ref_rejected_logps=float("nan"), margin=1.0)]
    result = encode_pairs(rows, smol_tokenizer, EncodeSpec(ref_columns=True, margin_column="margin"), "d.parquet")
    assert [e.id for e in result.examples] == ["r0"]
    got = [(r.row, r.row_id, r.field, r.reason.value) for r in result.rejects]
    assert got == [(1, "r1", "ref_chosen_logps", "missing_field"), (2, "r2", "margin", "missing_field"),
                   (3, "r3", "ref_rejected_logps", "nan_score")]
    assert all(r.file == "d.parquet" for r in result.rejects)
    short = encode_pairs([_row(0)], smol_tokenizer, EncodeSpec(max_length=30))
    assert not short.examples and short.rejects[0].reason.value == "sequence_too_long"
    assert short.rejects[0].field == "chosen" and "exceed max_length 30" in short.rejects[0].detail


def test_holdout_is_a_stable_hash_of_the_id():
    ids = [f"pair-{i}" for i in range(2000)]
    held = [in_holdout(i, 0.2) for i in ids]
    assert 0.17 < sum(held) / len(ids) < 0.23
    assert [in_holdout(i, 0.2) for i in reversed(ids)] == held[::-1]
    assert not any(in_holdout(i, 0.0) for i in ids)
    assert all(in_holdout(i, 0.3) for i, h in zip(ids, held) if h)  # a larger share keeps the smaller one's rows


def test_edit_span_weights_mark_the_edited_tokens(smol_tokenizer):
    text = REJECTED[0]["content"]
    start = text.index("124")
    spans = [{"side": "rejected", "char_start": start, "char_end": start + 3}]
    rows = [_row(0, metadata={"edit_spans": spans})]
    example = encode_pairs(rows, smol_tokenizer, EncodeSpec(edit_span_weight=3.0)).examples[0]
    assert example.chosen_weights is None  # no span on the chosen side
    weighted = [t for t, w in zip(example.rejected_ids, example.rejected_weights) if w == 3.0]
    assert smol_tokenizer.decode(weighted).strip() == "124"
    assert example.rejected_weights.count(1.0) == len(example.rejected_ids) - len(weighted)
    batch = collate([example], smol_tokenizer.pad_token_id)
    assert batch["loss_weights"][1].sum().item() == pytest.approx(len(example.rejected_ids) + 2.0 * len(weighted))
    bad = encode_pairs([_row(1, metadata={"edit_spans": [{"side": "rejected", "char_start": 5, "char_end": 500}]})],
                       smol_tokenizer, EncodeSpec(edit_span_weight=2.0))
    assert bad.rejects[0].reason.value == "bad_edit_spans" and bad.rejects[0].field == "metadata.edit_spans[0]"


def test_rationale_prompt_and_rows(smol_tokenizer):
    chat = rationale_prompt(PROMPT, "good", "bad", "rejected_first")
    text = chat[0]["content"]
    assert text.startswith("Given the prompt:\nWhat is 12 times 12?\n")
    assert 'Response above: "bad"\nor\nResponse below: "good"?' in text
    assert 'Response above: "good"' in rationale_prompt(PROMPT, "good", "bad", None)[0]["content"]  # authors' default
    rows = [_row(0, rationale="The chosen answer computes 144 correctly."), _row(1, rationale=None)]
    encoded = encode_pairs(rows, smol_tokenizer, EncodeSpec(rationale=True))
    assert encoded.counts["with_rationale"] == 1
    batch = collate(encoded.examples, smol_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 5 and batch["rationale_pairs"].tolist() == [0]
    rat = encoded.examples[0]
    assert smol_tokenizer.decode(rat.rationale_ids).startswith("The chosen answer computes 144")
    bad = encode_pairs([_row(0, rationale="r", rationale_order="sideways")], smol_tokenizer, EncodeSpec(rationale=True))
    assert bad.rejects[0].field == "rationale_order"


def test_load_pairs_reads_build_folders_and_names_bad_paths(hh_dataset, tmp_path):
    ds = load_pairs(hh_dataset, limit=5)
    assert len(ds) == 5 and {"id", "prompt", "chosen", "rejected"} <= set(ds.column_names)
    parquet = next((hh_dataset / "data").glob("*.parquet"))
    assert len(load_pairs(parquet)) == 12
    with pytest.raises(TrainError, match="nope: not found"):
        load_pairs(tmp_path / "nope")
    prompts_only = tmp_path / "p.parquet"
    prefdata.load(hh_dataset).select_columns(["id", "prompt"]).to_parquet(str(prompts_only))
    with pytest.raises(TrainError, match=r"not a pair dataset: no column\(s\) \['chosen', 'rejected'\]"):
        load_pairs(prompts_only)


# --- the epsilon contract -------------------------------------------------------------------------


def test_flip_rate_from_stats_json(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps(
        {"output": {}, "estimates": {"flip_rate": {"epsilon": 0.12, "interval": [0.08, 0.17], "method": "moments"}}}))
    flip, origin = read_flip_rate(tmp_path)
    assert flip.epsilon == 0.12 and flip.interval == (0.08, 0.17) and flip.method == "moments"
    assert origin.endswith("stats.json")


def test_flip_rate_from_the_card_when_stats_lack_it(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps({"output": {}}))
    (tmp_path / "README.md").write_text("---\nprefdata:\n  estimates:\n    flip_rate:\n      epsilon: 0.2\n"
                                        "      interval: [0.1, 0.3]\n      method: mixture\n---\n# card\n")
    flip, origin = read_flip_rate(tmp_path)
    assert flip.epsilon == 0.2 and "README.md" in origin


def test_flip_rate_from_stats_json_wins_over_the_card(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps(
        {"estimates": {"flip_rate": {"epsilon": 0.12, "interval": [0.08, 0.17], "method": "moments"}}}))
    (tmp_path / "README.md").write_text("---\nprefdata:\n  estimates:\n    flip_rate:\n      epsilon: 0.2\n"
                                        "      interval: [0.1, 0.3]\n      method: mixture\n---\n# card\n")
    flip, origin = read_flip_rate(tmp_path)
    assert flip.epsilon == 0.12 and flip.method == "moments"
    assert origin == str(tmp_path / "stats.json")


def test_flip_rate_missing_or_invalid_is_one_clear_line(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps({"output": {}}))
    with pytest.raises(TrainError) as info:
        read_flip_rate(tmp_path)
    message = str(info.value)
    assert "stats.json: no 'estimates.flip_rate'" in message and "--epsilon FLOAT" in message and "\n" not in message
    (tmp_path / "stats.json").write_text(json.dumps(
        {"estimates": {"flip_rate": {"epsilon": 0.3, "interval": [0.0, 0.2], "method": "m"}}}))
    with pytest.raises(TrainError, match=r"stats.json: estimates.flip_rate: .*outside its interval"):
        read_flip_rate(tmp_path)
    (tmp_path / "stats.json").write_text(json.dumps(
        {"estimates": {"flip_rate": {"epsilon": 0.6, "interval": [0.5, 0.7], "method": "m"}}}))
    with pytest.raises(TrainError, match=r"estimates.flip_rate.epsilon: Input should be less than 0.5"):
        read_flip_rate(tmp_path)


def test_train_config_checks_epsilon_against_the_loss(tmp_path):
    assert TrainConfig(dataset=tmp_path, loss="robust", epsilon="auto").epsilon == "auto"
    assert TrainConfig(dataset=tmp_path, loss="cdpo", epsilon="0.1").epsilon == pytest.approx(0.1)
    with pytest.raises(ValueError, match="loss 'robust' needs epsilon"):
        TrainConfig(dataset=tmp_path, loss="robust")
    with pytest.raises(ValueError, match="epsilon applies to the cdpo and robust losses only"):
        TrainConfig(dataset=tmp_path, loss="sigmoid", epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon must be a number or 'auto'"):
        TrainConfig(dataset=tmp_path, loss="robust", epsilon="lots")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TrainConfig(dataset=tmp_path, learning_rate=1.0)
