"""Build an example recipe exactly as shipped, on the session's vLLM engine and the real data."""

from __future__ import annotations

from pathlib import Path

from prefdata.builder import BuildResult, run_build
from tests.conftest import REPO


def build_shipped(recipe: str, data_file: Path, vllm_engine, tmp_path: Path, limit: int) -> tuple[BuildResult, dict]:
    """Run examples/<recipe> on `limit` rows of `data_file`; returns the result and its first stage's
    stats, having checked that every input row came out as a pair or a counted drop."""
    result = run_build(REPO / "examples" / recipe, input=data_file, limit=limit, output=tmp_path / "out",
                       engines={"policy": vllm_engine})
    stage = result.stats["stages"][0]
    assert stage["rows_in"] == limit
    return result, stage
