"""The pair schema, readers, writers and TRL converters."""

from prefdata.schemas.errors import InputError, PrefdataError, Reject, RowError, rejects_table
from prefdata.schemas.pair import (
    CORE_PAIR_COLUMNS,
    MESSAGES_TYPE,
    PROMPT_SCHEMA,
    SCHEMA_VERSION,
    make_pair_id,
    pair_schema,
)
from prefdata.schemas.readers import ColumnMap, ReadResult, parse_hh_transcript, read_pairs, read_prompts
from prefdata.schemas.trl import to_trl_conversational, to_trl_standard
from prefdata.schemas.writers import load_dataset_dir, write_parquet_atomic

__all__ = [
    "CORE_PAIR_COLUMNS", "MESSAGES_TYPE", "PROMPT_SCHEMA", "SCHEMA_VERSION", "ColumnMap", "InputError",
    "PrefdataError", "ReadResult", "Reject", "RowError", "load_dataset_dir", "make_pair_id", "pair_schema",
    "parse_hh_transcript", "read_pairs", "read_prompts", "rejects_table", "to_trl_conversational",
    "to_trl_standard", "write_parquet_atomic",
]
