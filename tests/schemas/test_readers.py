"""Readers: prompts and pairs from JSONL / Parquet / `save_to_disk` folders, with rejects for bad rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefdata.schemas import (
    PROMPT_SCHEMA,
    ColumnMap,
    InputError,
    Reject,
    RowError,
    make_pair_id,
    parse_hh_transcript,
    read_pairs,
    read_prompts,
    rejects_table,
)
from prefdata.schemas.pair import pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE
from prefdata.types import RejectReason

U = "user"
A = "assistant"


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reasons(result) -> dict[int, tuple[str, str | None]]:
    return {r.row: (r.reason.value, r.field) for r in result.rejects}


# --- prompts ------------------------------------------------------------------------------------


def test_prompt_forms(fixtures_dir):
    result = read_prompts(fixtures_dir / "prompts_forms.jsonl")
    assert result.rejects == []
    assert result.rows_read == 6
    assert result.table.schema == PROMPT_SCHEMA
    rows = result.table.to_pylist()
    assert rows == [
        {"id": "s", "prompt": [msg(U, "Tell me a joke.")], "reference": None},
        {"id": "c", "prompt": [msg("system", "You are terse."), msg(U, "Why is the sky blue?")], "reference": None},
        {"id": "h", "prompt": [msg(U, "Hi!"), msg(A, "Hello."), msg(U, "What's a good name for a cat?")], "reference": None},
        # HH prompts end with an empty "Assistant:" cue: it is not a turn.
        {"id": "h-cue", "prompt": [msg(U, "Recommend a book.")], "reference": None},
        # no id -> '<file stem>-<row>'
        {"id": "prompts_forms-4", "prompt": [msg(U, "A prompt without an id.")], "reference": None},
        # the same text under another id is another row
        {"id": "dup-text", "prompt": [msg(U, "Tell me a joke.")], "reference": None},
    ]


def test_gsm8k_style_reference_and_generated_ids(fixtures_dir):
    result = read_prompts(fixtures_dir / "gsm8k_small.jsonl", ColumnMap(prompt="question", reference="answer"))
    assert result.rejects == []
    rows = result.table.to_pylist()
    assert [r["id"] for r in rows] == ["gsm8k_small-0", "gsm8k_small-1", "gsm8k_small-2"]
    source = [json.loads(line) for line in (fixtures_dir / "gsm8k_small.jsonl").read_text().splitlines()]
    for row, src in zip(rows, source, strict=True):
        assert row["prompt"] == [msg(U, src["question"])]
        assert row["reference"] == src["answer"]
    assert rows[0]["reference"].endswith("#### 7")


def test_numeric_reference_becomes_a_string(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "q", "answer": 42}, {"id": "b", "prompt": "q", "answer": 1.5}])
    assert read_prompts(path, ColumnMap(reference="answer")).table.column("reference").to_pylist() == ["42", "1.5"]


def test_generated_ids_use_the_line_number(tmp_path):
    path = tmp_path / "stem.name.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    result = read_prompts(path)
    assert result.table.column("id").to_pylist() == ["stem.name-0", "stem.name-2"]


def test_integer_ids_and_id_column_none(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "prompt": "a"}, {"id": 8, "prompt": "b"}])
    assert read_prompts(path).table.column("id").to_pylist() == ["7", "8"]
    assert read_prompts(path, ColumnMap(id=None)).table.column("id").to_pylist() == ["p-0", "p-1"]


def test_nested_column_paths(tmp_path):
    path = write_jsonl(tmp_path / "mt.jsonl", [
        {"meta": {"key": "q1"}, "turns": ["first turn", "second turn"], "ref": {"text": "5"}},
    ])
    result = read_prompts(path, ColumnMap(id="meta.key", prompt="turns.1", reference="ref.text"))
    assert result.table.to_pylist() == [{"id": "q1", "prompt": [msg(U, "second turn")], "reference": "5"}]


def test_limit_counts_accepted_rows(fixtures_dir, tmp_path):
    result = read_prompts(fixtures_dir / "prompts_forms.jsonl", limit=2)
    assert result.table.column("id").to_pylist() == ["s", "c"]
    assert result.rows_read == 2
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prompt": ""}, {"id": "y", "prompt": "a"}, {"id": "z", "prompt": "b"}])
    limited = read_prompts(path, limit=1)
    assert limited.table.column("id").to_pylist() == ["y"]
    assert reasons(limited) == {0: ("empty_text", "prompt")}


def test_prompt_rejects(tmp_path):
    rows = [
        {"id": "ok", "prompt": "fine"},
        {"id": "ends-assistant", "prompt": [msg(U, "q"), msg(A, "a")]},
        {"id": "empty", "prompt": "  "},
        {"id": "number", "prompt": 3},
        {"id": "no-prompt"},
        {"id": "bad-role", "prompt": [{"role": "bot", "content": "x"}]},
        {"id": "empty-list", "prompt": []},
        {"id": "not-message", "prompt": ["just a string"]},
        {"id": "empty-content", "prompt": [msg(U, " ")]},
        {"id": "ok", "prompt": "again"},
        {"id": "", "prompt": "empty id"},
        {"id": "ref-missing", "prompt": "q"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    result = read_prompts(path)
    assert result.table.column("id").to_pylist() == ["ok", "ref-missing"]
    assert reasons(result) == {
        1: ("bad_role", "prompt"),
        2: ("empty_text", "prompt"),
        3: ("wrong_type", "prompt"),
        4: ("missing_field", "prompt"),
        5: ("bad_role", "prompt[0].role"),
        6: ("empty_text", "prompt"),
        7: ("wrong_type", "prompt[0]"),
        8: ("empty_text", "prompt[0].content"),
        9: ("duplicate_id", "id"),
        10: ("empty_text", "id"),
    }
    assert result.rows_read == len(rows)
    assert all(r.file == str(path) and r.stage == "read" for r in result.rejects)


def test_prompt_reference_missing_in_some_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "q", "answer": "#### 1"}, {"id": "b", "prompt": "q"},
                                               {"id": "c", "prompt": "q", "answer": {"x": 1}}])
    result = read_prompts(path, ColumnMap(reference="answer"))
    assert result.table.column("id").to_pylist() == ["a"]
    assert reasons(result) == {1: ("missing_field", "answer"), 2: ("wrong_type", "answer")}


@pytest.mark.parametrize(
    ("columns", "field"),
    [(ColumnMap(), "prompt"), (ColumnMap(prompt="question", reference="solution"), "solution")],
)
def test_misnamed_prompt_column_in_every_row_raises(fixtures_dir, columns, field):
    with pytest.raises(InputError) as info:
        read_prompts(fixtures_dir / "gsm8k_small.jsonl", columns)
    assert info.value.field == field
    assert info.value.file == str(fixtures_dir / "gsm8k_small.jsonl")
    assert f"field '{field}'" in str(info.value)


def test_prompts_same_table_from_jsonl_parquet_and_datasets_folder(fixtures_dir, tmp_path):
    import datasets

    columns = ColumnMap(prompt="question", reference="answer")
    source = [json.loads(line) for line in (fixtures_dir / "gsm8k_small.jsonl").read_text().splitlines()]
    expected = read_prompts(fixtures_dir / "gsm8k_small.jsonl", columns).table

    parquet = tmp_path / "gsm8k_small.parquet"
    pq.write_table(pa.Table.from_pylist(source), parquet)
    folder = tmp_path / "gsm8k_small"
    datasets.Dataset.from_list(source).save_to_disk(str(folder))
    parquet_dir = tmp_path / "pq" / "gsm8k_small"
    parquet_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(source[:2]), parquet_dir / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(source[2:]), parquet_dir / "part-1.parquet")

    for path in (parquet, folder, parquet_dir):
        result = read_prompts(path, columns)
        assert result.rejects == []
        assert result.table.equals(expected, check_metadata=True), path
    assert expected.num_rows == 3


def test_datasets_dict_folder_reads_train_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "test": datasets.Dataset.from_list([{"id": "t", "prompt": "test row"}]),
        "train": datasets.Dataset.from_list([{"id": "a", "prompt": "train row"}]),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    assert read_prompts(tmp_path / "dd").table.column("id").to_pylist() == ["a"]


def test_chat_prompts_from_parquet(tmp_path):
    rows = [{"id": "a", "prompt": [msg(U, "hi")]}, {"id": "b", "prompt": [msg("system", "s"), msg(U, "yo")]}]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_prompts(path).table.to_pylist() == [{**r, "reference": None} for r in rows]


# --- file-level errors --------------------------------------------------------------------------


def test_missing_file_raises_input_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for reader in (read_prompts, read_pairs):
        with pytest.raises(InputError, match="file not found") as info:
            reader(missing)
        assert info.value.file == str(missing)


def test_unknown_suffix_and_unreadable_parquet(tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="format") as info:
        read_prompts(text)
    assert info.value.file == str(text)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="Parquet"):
        read_prompts(broken)
    with pytest.raises(InputError, match="save_to_disk"):
        read_prompts(tmp_path / "data.txt", fmt="datasets")


def test_explicit_format_overrides_suffix(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text('{"id": "a", "prompt": "q"}\n', encoding="utf-8")
    assert read_prompts(path, fmt="jsonl").table.column("id").to_pylist() == ["a"]


# --- pairs: good and bad rows in one file -------------------------------------------------------

PAIRS_EXPECTED_REJECTS = {
    1: ("missing_field", "rejected"),
    2: ("empty_text", "chosen"),
    3: ("chosen_equals_rejected", "rejected"),
    4: ("invalid_json", None),
    5: ("not_utf8", None),
    6: ("wrong_type", "chosen"),
    8: ("duplicate_id", "id"),
    9: ("nan_score", "chosen_score"),
    11: ("bad_role", "prompt"),
    12: ("not_an_object", None),
    15: ("transcripts_diverge_early", "chosen"),
    16: ("bad_role", "chosen[0].role"),
    17: ("wrong_type", "id"),
}
SCORES = ColumnMap(chosen_score="chosen_score", rejected_score="rejected_score")


@pytest.fixture(scope="module")
def mixed_pairs(fixtures_dir):
    return read_pairs(fixtures_dir / "pairs_mixed.jsonl", SCORES)


def test_mixed_pairs_rejects_name_reason_field_and_row(mixed_pairs, fixtures_dir):
    assert reasons(mixed_pairs) == PAIRS_EXPECTED_REJECTS
    for reject in mixed_pairs.rejects:
        assert reject.file == str(fixtures_dir / "pairs_mixed.jsonl")
        assert reject.stage == "read"
        assert reject.payload is not None  # the row (or raw line) is kept


def test_mixed_pairs_nothing_lost(mixed_pairs):
    # 18 lines, one blank: every non-blank line is either a pair or a reject.
    assert mixed_pairs.rows_read == 17
    assert mixed_pairs.table.num_rows + len(mixed_pairs.rejects) == mixed_pairs.rows_read
    assert mixed_pairs.table.column("prompt_id").to_pylist() == ["ok-0", "ok-1", "ok-2", "ok-3"]


def test_mixed_pairs_good_rows_content_and_alignment(mixed_pairs, fixtures_dir):
    rows = {r["prompt_id"]: r for r in mixed_pairs.table.to_pylist()}
    assert mixed_pairs.table.schema == pair_schema(INPUT_METADATA_TYPE)

    ok0 = rows["ok-0"]
    assert ok0["prompt"] == [msg(U, "What is 2+2?")]
    assert ok0["chosen"] == [msg(A, "4")] and ok0["rejected"] == [msg(A, "5")]
    assert (ok0["chosen_score"], ok0["rejected_score"], ok0["margin"]) == (1.0, 0.25, 0.75)
    assert ok0["metadata"] == {"source_file": "pairs_mixed.jsonl", "source_row": 0}
    assert ok0["source"] == "input"
    assert ok0["id"] == make_pair_id("ok-0", "input", {"kind": "pairs"})

    # Same prompt text as ok-0, another id: its own row with its own responses.
    ok1 = rows["ok-1"]
    assert ok1["prompt"] == ok0["prompt"]
    assert ok1["chosen"] == [msg(A, "Four.")] and ok1["rejected"] == [msg(A, "Twenty-two.")]
    assert ok1["chosen_score"] is None and ok1["margin"] is None
    assert ok1["metadata"]["source_row"] == 7
    assert ok1["id"] != ok0["id"]

    ok2 = rows["ok-2"]
    assert ok2["prompt"] == [msg("system", "Be brief."), msg(U, "Name a color."), msg(A, "Red."), msg(U, "Another?")]
    assert ok2["chosen"] == [msg(A, "Blue.")] and ok2["rejected"] == [msg(A, "Red again.")]
    assert ok2["margin"] == 2.0
    assert ok2["metadata"]["source_row"] == 13

    # The duplicate 'ok-0' on line 8 did not replace the first one.
    assert all(r["prompt"] != [msg(U, "Another prompt")] for r in rows.values())

    # Every pair's source_row points at the line that holds its id.
    lines = (fixtures_dir / "pairs_mixed.jsonl").read_bytes().split(b"\n")
    for row in rows.values():
        assert json.loads(lines[row["metadata"]["source_row"]])["id"] == row["prompt_id"]


def test_implicit_prompt_pair_splits_at_common_prefix(mixed_pairs):
    ok3 = next(r for r in mixed_pairs.table.to_pylist() if r["prompt_id"] == "ok-3")
    assert ok3["prompt"] == [msg(U, "Say hi.")]
    assert ok3["chosen"] == [msg(A, "Hi!")]
    assert ok3["rejected"] == [msg(A, "No.")]


def test_implicit_prompt_multi_turn(tmp_path):
    context = [msg("system", "S"), msg(U, "a"), msg(A, "b"), msg(U, "c")]
    rows = [
        {"id": "m", "chosen": context + [msg(A, "good")], "rejected": context + [msg(A, "bad")]},
        # both responses open with the same assistant message: the prompt still ends at the user turn
        {"id": "n", "chosen": [msg(U, "q"), msg(A, "same"), msg(A, "x")], "rejected": [msg(U, "q"), msg(A, "same"), msg(A, "y")]},
        # plain strings without a prompt column: nothing to split
        {"id": "o", "chosen": "good", "rejected": "bad"},
        # differ in the first user turn
        {"id": "p", "chosen": [msg(U, "q1"), msg(A, "x")], "rejected": [msg(U, "q2"), msg(A, "y")]},
    ]
    result = read_pairs(write_jsonl(tmp_path / "implicit.jsonl", rows))
    got = result.table.to_pylist()
    assert [r["prompt_id"] for r in got] == ["m", "n"]
    assert got[0]["prompt"] == context
    assert got[0]["chosen"] == [msg(A, "good")] and got[0]["rejected"] == [msg(A, "bad")]
    assert got[1]["prompt"] == [msg(U, "q")]
    assert got[1]["chosen"] == [msg(A, "same"), msg(A, "x")]
    assert reasons(result) == {2: ("missing_field", "prompt"), 3: ("transcripts_diverge_early", "chosen")}


def test_implicit_prompt_from_parquet(tmp_path):
    rows = [{"id": "a", "chosen": [msg(U, "q"), msg(A, "yes")], "rejected": [msg(U, "q"), msg(A, "no")]}]
    path = tmp_path / "trl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    got = read_pairs(path).table.to_pylist()
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in got] == [([msg(U, "q")], [msg(A, "yes")], [msg(A, "no")])]


def test_explicit_prompt_response_with_user_turn_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "q", "chosen": [msg(U, "x")], "rejected": "y"}])
    assert reasons(read_pairs(path)) == {0: ("bad_role", "chosen")}


def test_hh_style_prompt_string_with_separate_responses(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:", "chosen": " Sure: ...", "rejected": " No."},
    ])
    row = read_pairs(path).table.to_pylist()[0]
    assert row["prompt"] == [msg(U, "Hi"), msg(A, "Hello"), msg(U, "Joke?")]
    assert row["chosen"] == [msg(A, " Sure: ...")]


def test_score_columns(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "prompt": "q", "chosen": "x", "rejected": "y", "cs": 2, "rs": 0.5},
        {"id": "b", "prompt": "q", "chosen": "x", "rejected": "y", "cs": "high", "rs": 0.5},
        {"id": "c", "prompt": "q", "chosen": "x", "rejected": "y", "cs": 1, "rs": True},
        {"id": "d", "prompt": "q", "chosen": "x", "rejected": "y", "rs": 1.0},
    ])
    path.write_text(path.read_text() + '{"id": "e", "prompt": "q", "chosen": "x", "rejected": "y", "cs": 1, "rs": -Infinity}\n')
    result = read_pairs(path, ColumnMap(chosen_score="cs", rejected_score="rs"))
    got = {r["prompt_id"]: (r["chosen_score"], r["rejected_score"], r["margin"]) for r in result.table.to_pylist()}
    assert got == {"a": (2.0, 0.5, 1.5), "d": (None, 1.0, None)}
    assert reasons(result) == {1: ("wrong_type", "cs"), 2: ("wrong_type", "rs"), 4: ("nan_score", "rs")}


@pytest.mark.parametrize(
    ("rows", "columns", "field"),
    [
        ([{"id": "a", "prompt": "q", "response_a": "x", "rejected": "y"}] * 3, ColumnMap(), "chosen"),
        ([{"id": "a", "prompt": "q", "chosen": "x", "worse": "y"}, {"id": "b", "prompt": "q", "chosen": "z", "worse": "w"}],
         ColumnMap(), "rejected"),
        ([{"id": "a", "question": "q", "chosen": "x", "rejected": "y"}], ColumnMap(), "prompt"),
        ([{"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"}], ColumnMap(chosen="good"), "good"),
    ],
)
def test_misnamed_pair_column_in_every_row_raises(tmp_path, rows, columns, field):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(InputError) as info:
        read_pairs(path, columns)
    assert info.value.field == field
    assert info.value.file == str(path)
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)


def test_column_missing_in_some_rows_only_rejects_those(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "q", "chosen": "x", "rejected": "y"},
                                               {"id": "b", "prompt": "q", "chosen": "x"}])
    result = read_pairs(path)
    assert result.table.column("prompt_id").to_pylist() == ["a"]
    assert reasons(result) == {1: ("missing_field", "rejected")}


def test_mapped_pair_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"uid": "u1", "instruction": "q", "good": "x", "bad": "y"}])
    result = read_pairs(path, ColumnMap(id="uid", prompt="instruction", chosen="good", rejected="bad"))
    row = result.table.to_pylist()[0]
    assert (row["prompt_id"], row["prompt"], row["chosen"], row["rejected"]) == ("u1", [msg(U, "q")], [msg(A, "x")], [msg(A, "y")])


def test_pairs_limit(fixtures_dir):
    result = read_pairs(fixtures_dir / "pairs_mixed.jsonl", SCORES, limit=2)
    assert result.table.column("prompt_id").to_pylist() == ["ok-0", "ok-1"]
    assert result.rows_read == 8


def test_strict_mode_conversion_of_a_reject(mixed_pairs):
    reject = next(r for r in mixed_pairs.rejects if r.row == 6)
    error = reject.to_error()
    assert isinstance(error, InputError)
    assert (error.file, error.row, error.field) == (reject.file, 6, "chosen")
    assert "row 6" in str(error) and "field 'chosen'" in str(error) and "wrong_type" in str(error)


def test_rejects_table_keeps_payloads(mixed_pairs):
    table = rejects_table(mixed_pairs.rejects)
    assert table.num_rows == len(PAIRS_EXPECTED_REJECTS)
    records = {r["row"]: r for r in table.to_pylist()}
    assert records[4]["payload"] == '{"id": "bad-json", "prompt": "Q", "chosen": "a"\n'
    assert "caf\\xe9" in records[5]["payload"]
    assert json.loads(records[6]["payload"])["chosen"] == 42
    assert records[9]["reason"] == "nan_score" and records[9]["field"] == "chosen_score"


def test_reject_and_row_error_values():
    err = RowError(RejectReason.EMPTY_TEXT, "chosen", "empty text")
    assert str(err) == "empty_text: field 'chosen': empty text"
    reject = Reject(stage="read", reason=RejectReason.INVALID_JSON, detail="bad", file="f.jsonl", row=3, payload={"a": 1})
    assert reject.as_record()["payload"] == '{"a": 1}'
    assert str(reject.to_error()) == "f.jsonl: row 3: invalid_json: bad"


# --- HH transcripts -----------------------------------------------------------------------------


def test_parse_hh_transcript():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Line one\nline two\n\nAssistant:  two spaces"
    assert parse_hh_transcript(text) == [msg(U, "Hi there"), msg(A, "Hello!"), msg(U, "Line one\nline two"), msg(A, " two spaces")]
    assert parse_hh_transcript("Human: a\n\nAssistant: b") == [msg(U, "a"), msg(A, "b")]
    with pytest.raises(RowError) as info:
        parse_hh_transcript("no turns here", "chosen")
    assert (info.value.reason, info.value.field) == (RejectReason.WRONG_TYPE, "chosen")
    with pytest.raises(RowError) as info:
        parse_hh_transcript("intro\n\nHuman: a", "chosen")
    assert (info.value.reason, info.value.field) == (RejectReason.BAD_ROLE, "chosen")


def test_hh_mixed_rows(fixtures_dir):
    result = read_pairs(fixtures_dir / "hh_mixed.jsonl", kind="hh")
    assert reasons(result) == {
        1: ("no_assistant_turn", "chosen"),
        2: ("transcripts_diverge_early", "chosen"),
        3: ("transcripts_diverge_early", "chosen"),
        4: ("bad_role", "chosen"),
        5: ("empty_text", "rejected"),
        6: ("wrong_type", "chosen"),
        8: ("chosen_equals_rejected", "rejected"),
    }
    rows = result.table.to_pylist()
    assert [r["prompt_id"] for r in rows] == ["hhm-0", "hhm-7"]
    assert [r["metadata"]["source_row"] for r in rows] == [0, 7]
    # Same opening question, different ids: both kept, each with its own responses.
    assert rows[0]["prompt"] == rows[1]["prompt"] == [msg(U, "Hi there")]
    assert rows[0]["chosen"] == [msg(A, "Hello! How can I help?")]
    assert rows[1]["chosen"] == [msg(A, "Hey, what do you need?")]
    assert rows[1]["rejected"] == [msg(A, "Go away.")]
    assert rows[0]["id"] == make_pair_id("hhm-0", "input", {"kind": "hh"})


def test_hh_without_assistant_turn_in_every_row_is_not_a_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: q", "rejected": "\n\nHuman: q"}])
    result = read_pairs(path, kind="hh")
    assert reasons(result) == {0: ("no_assistant_turn", "chosen")}


def test_hh_misnamed_transcript_column_raises(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"good": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}] * 2)
    with pytest.raises(InputError) as info:
        read_pairs(path, kind="hh")
    assert info.value.field == "chosen"
    assert read_pairs(path, ColumnMap(chosen="good"), kind="hh").table.num_rows == 2  # mapped: both rows read


def test_hh_ids_generated_per_row(tmp_path):
    row = {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}
    result = read_pairs(write_jsonl(tmp_path / "hh.jsonl", [row, row]), kind="hh")
    assert result.table.column("prompt_id").to_pylist() == ["hh-0", "hh-1"]
    assert len(set(result.table.column("id").to_pylist())) == 2


@pytest.mark.realdata
def test_real_hh_rlhf_rows(shared_data):
    path = shared_data / "hh_rlhf_harmless_test_1312.jsonl"
    source = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    result = read_pairs(path, kind="hh")
    assert result.rows_read == 1312
    # Two source rows end with an empty chosen Assistant turn; everything else is a pair.
    assert [(r.row, r.reason.value, r.field) for r in result.rejects] == [(46, "empty_text", "chosen"), (267, "empty_text", "chosen")]
    assert result.table.num_rows == 1310
    rows = result.table.to_pylist()
    assert len({r["id"] for r in rows}) == 1310
    # 4 rows end with two Assistant turns after a blank line, row 867 after a single newline.
    assert sum(len(r["chosen"]) + len(r["rejected"]) > 2 for r in rows) == 5
    for row in rows:
        src = source[row["metadata"]["source_row"]]
        assert row["prompt_id"] == src["id"]
        assert row["prompt"][0]["role"] == U and row["prompt"][-1]["role"] == U
        for side in ("chosen", "rejected"):
            # (4 source rows hold two Assistant turns in a row at the end; both are the response.)
            assert row[side] and all(m["role"] == A for m in row[side])
            # Parsed turns written back as a transcript give the source text again.
            rebuilt = "".join(f"\n\n{'Human' if m['role'] == U else 'Assistant'}: {m['content']}" for m in row["prompt"] + row[side])
            # (a turn marker after a single newline is a boundary too: compare with blank-line separators)
            assert rebuilt == re.sub(r"\n+(Human|Assistant):", r"\n\n\1:", src[side]), (src["id"], side)


def test_rejects_carry_row_id_and_mapped_id_field(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"key": "k1", "q": "hello"}, {"key": "k1", "q": "again"}, {"key": "k2", "q": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_prompts(path, ColumnMap(id="key", prompt="q"))
    assert result.table.column("id").to_pylist() == ["k1"]
    assert [(r.reason.value, r.field, r.row_id) for r in result.rejects] == [
        ("duplicate_id", "key", "k1"), ("empty_text", "q", "k2")]


# --- kind = "completions": a prompt and a list of scored completions --------------------------

COMPLETION_COLUMNS = dict(prompt="instruction", completion_text="output", completion_score="preference")


def test_completions_best_vs_worst_and_rejects(fixtures_dir):
    from prefdata.schemas import ColumnMap

    result = read_pairs(fixtures_dir / "completions_small.jsonl", ColumnMap(**COMPLETION_COLUMNS), kind="completions")
    rows = {r["prompt_id"]: r for r in result.table.to_pylist()}
    assert set(rows) == {"c1", "c6"}
    c1 = rows["c1"]
    assert c1["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert (c1["chosen"][0]["content"], c1["rejected"][0]["content"]) == ("Red is a colour.", "Banana.")
    assert (c1["chosen_score"], c1["rejected_score"], c1["margin"]) == (1.75, 1.0, 0.75)
    assert c1["metadata"] == {"source_file": "completions_small.jsonl", "source_row": 0, "n_completions": 3,
                              "n_scored": 3, "chosen_index": 1, "rejected_index": 2}
    # duplicate texts count once (the first kept): "Oak." at 1.1 vs "Pine." at 1.4
    assert (rows["c6"]["chosen"][0]["content"], rows["c6"]["rejected"][0]["content"]) == ("Pine.", "Oak.")
    rejects = {(r.row_id, r.reason, r.field) for r in result.rejects}
    assert rejects == {
        ("c2", RejectReason.NO_PAIR, "completions"),  # tie
        ("c3", RejectReason.NO_PAIR, "completions"),  # one scored, non-empty completion
        ("c4", RejectReason.WRONG_TYPE, "preference"),
        ("c5", RejectReason.WRONG_TYPE, "completions"),
    }
    assert {r.row: r.row_id for r in result.rejects}[1] == "c2"


@pytest.mark.realdata
def test_completions_reads_oasst_ranks(shared_data):
    from prefdata.schemas import ColumnMap

    columns = ColumnMap(prompt="prompt.text", completions="prompt.replies", completion_text="text",
                        completion_score="rank", lower_score_is_better=True)
    result = read_pairs(shared_data / "oasst_trees_70.jsonl", columns, kind="completions")
    trees = {t["id"]: t for t in map(json.loads, (shared_data / "oasst_trees_70.jsonl").open())}
    assert result.table.num_rows == 69 and [r.reason for r in result.rejects] == [RejectReason.NO_PAIR]
    for row in result.table.to_pylist():
        replies = trees[row["prompt_id"]]["prompt"]["replies"]
        ranks = {r["text"]: r["rank"] for r in replies}
        assert ranks[row["chosen"][0]["content"]] == 0 and row["chosen_score"] == 0.0
        assert ranks[row["rejected"][0]["content"]] == max(ranks.values()) == -row["rejected_score"]


def test_hh_marker_after_a_single_newline_is_a_turn_boundary():
    """HH-RLHF has transcripts with '\\nHuman:' after a single newline: a new turn, never assistant text."""
    text = "\n\nHuman: Hi\n\nAssistant: Hello.\nHuman: Tell me a joke.\n\nAssistant: No."
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."},
    ]


@pytest.mark.realdata
def test_hh_single_newline_marker_on_real_rows(shared_data):
    """Row 867 of the shared HH file has '\nAssistant:' after a single newline: two turns, not one."""
    path = shared_data / "hh_rlhf_harmless_test_1312.jsonl"
    source = json.loads(path.read_text(encoding="utf-8").splitlines()[867])
    (row,) = [r for r in read_pairs(path, kind="hh").table.to_pylist() if r["prompt_id"] == source["id"]]
    assert [m["role"] for m in row["chosen"]][-2:] == ["assistant", "assistant"]
    assert row["chosen"][-1]["content"].startswith("  By the way")
    assert not any("\nAssistant:" in m["content"] or "\nHuman:" in m["content"] for m in row["chosen"] + row["prompt"])
