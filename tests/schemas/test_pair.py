"""The pair schema: versioned Arrow layout and stable pair ids."""

from __future__ import annotations

import pyarrow as pa
import pytest

from prefdata.schemas import (
    CORE_PAIR_COLUMNS,
    MESSAGES_TYPE,
    PROMPT_SCHEMA,
    SCHEMA_VERSION,
    make_pair_id,
    pair_schema,
)
from prefdata.schemas.pair import empty_pair_table, fingerprint, messages_text, schema_version_of

META = pa.struct([pa.field("source_file", pa.string())])


def test_make_pair_id_is_a_stable_golden_value():
    # A pair id must not change between runs or releases (resumed builds and dedup rely on it).
    pid = make_pair_id("row-1", "on_policy", {"n": 4, "strategy": "max_min"}, key=[0, 3])
    assert pid == "d0ad42ef8de5814c1f41"
    assert pid == make_pair_id("row-1", "on_policy", {"n": 4, "strategy": "max_min"}, key=[0, 3])


def test_make_pair_id_ignores_parameter_order():
    assert make_pair_id("r", "g", {"a": 1, "b": 2}) == make_pair_id("r", "g", {"b": 2, "a": 1})


@pytest.mark.parametrize(
    "other",
    [
        ("row-2", "on_policy", {"n": 4, "strategy": "max_min"}, [0, 3]),  # source id
        ("row-1", "input", {"n": 4, "strategy": "max_min"}, [0, 3]),  # generator
        ("row-1", "on_policy", {"n": 8, "strategy": "max_min"}, [0, 3]),  # a parameter value
        ("row-1", "on_policy", {"n": 4, "strategy": "ranked"}, [0, 3]),  # another parameter value
        ("row-1", "on_policy", {"n": 4}, [0, 3]),  # a parameter missing
        ("row-1", "on_policy", {"n": 4, "strategy": "max_min"}, [0, 2]),  # key
        ("row-1", "on_policy", {"n": 4, "strategy": "max_min"}, None),  # no key
    ],
)
def test_make_pair_id_differs_when_any_input_differs(other):
    base = make_pair_id("row-1", "on_policy", {"n": 4, "strategy": "max_min"}, key=[0, 3])
    assert make_pair_id(other[0], other[1], other[2], key=other[3]) != base


def test_make_pair_id_format():
    pid = make_pair_id("x", "g", {})
    assert len(pid) == 20
    int(pid, 16)  # hex


def test_fingerprint_is_key_order_and_whitespace_insensitive():
    assert fingerprint({"a": [1, 2], "b": "x"}) == fingerprint({"b": "x", "a": [1, 2]})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_pair_schema_layout_and_version():
    schema = pair_schema(META)
    assert tuple(schema.names) == CORE_PAIR_COLUMNS
    for name in ("prompt", "chosen", "rejected"):
        assert schema.field(name).type == MESSAGES_TYPE
        assert not schema.field(name).nullable
    assert schema.field("metadata").type == META
    assert schema.field("chosen_score").type == pa.float64()
    assert schema_version_of(schema) == SCHEMA_VERSION == "1.0"
    assert schema_version_of(PROMPT_SCHEMA) == SCHEMA_VERSION
    assert PROMPT_SCHEMA.names == ["id", "prompt", "reference"]
    assert schema_version_of(pa.schema([pa.field("x", pa.int64())])) is None


@pytest.mark.parametrize("bad", [pa.struct([]), pa.string()])
def test_pair_schema_needs_a_non_empty_metadata_struct(bad):
    with pytest.raises(ValueError, match="at least one field"):
        pair_schema(bad)


def test_empty_pair_table_has_the_schema():
    table = empty_pair_table(META)
    assert table.num_rows == 0
    assert table.schema == pair_schema(META)
    assert schema_version_of(table.schema) == SCHEMA_VERSION


def test_messages_text_joins_contents():
    assert messages_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"
