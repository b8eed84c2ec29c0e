"""Builds on a served model (a real vLLM OpenAI server, the `vllm_server` fixture): the shipped
examples/served.toml through the CLI; a fleet of two servers behind a key that is written nowhere;
adding a server reuses the request cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefdata.builder import run_build

from .served import Proxy

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "data"
SECRET = "sk-prefdata-test-9c1e77d04b"


def _pairs(out: Path):
    files = sorted((out / "data").glob("*.parquet")) if (out / "data").is_dir() else sorted(out.glob("*.parquet"))
    assert files, list(out.iterdir())
    return pq.read_table(files).to_pylist()


@pytest.mark.realdata
def test_served_example_builds_pairs_through_the_cli(vllm_server, shared_data, tmp_path):
    env = {**os.environ, "PREFDATA_SERVER_URL": vllm_server.url, "PREFDATA_SERVER_MODEL": vllm_server.name,
           "PREFDATA_DATA": str(shared_data)}
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "prefdata", "build", str(REPO / "examples" / "served.toml"),
                          "--limit", "4", "--output", str(out), "--quiet"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    engine = stats["engines"]["policy"]
    assert engine["backend"] == "openai" and engine["model"] == vllm_server.name
    assert engine["capabilities"]["prompt_logprobs"] and engine["capabilities"]["token_id_prompts"]
    stage = stats["stages"][0]
    assert stage["rows_in"] == 4
    pairs = _pairs(out)
    assert pairs and len(pairs) + sum(stage.get("drops", {}).values()) >= 1
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"][-1]["role"] == "assistant" and pair["chosen"][-1]["content"].strip()
        assert pair["chosen_score"] > pair["rejected_score"] and 1 <= pair["rejected_score"] <= 10


def _recipe(urls, out: Path, key_env: str | None) -> dict:
    engine = {"backend": "openai", "base_url": urls, "model": "smollm2-served", "max_concurrency": 2}
    if key_env:
        engine["api_key_env"] = key_env
    return {"name": "served_fleet", "seed": 3,
            "source": {"path": str(FIXTURES / "prompts_small.jsonl"), "kind": "prompts", "limit": 3},
            "engines": {"policy": engine},
            "stages": [{"type": "on_policy", "engine": "policy", "n": 2, "strategy": "max_min",
                        "sampling": {"temperature": 0.9, "max_tokens": 24},
                        "scorer": {"type": "judge", "engine": "policy"}}],
            "output": {"dir": str(out), "shard_size": 8, "checkpoints": False}}


def test_fleet_with_a_key_writes_the_key_nowhere_and_reuses_the_cache(vllm_server, tmp_path, monkeypatch, caplog,
                                                                      capfd):
    monkeypatch.setenv("PREFDATA_TEST_SERVED_KEY", SECRET)
    parts = urllib.parse.urlsplit(vllm_server.url)
    upstream = f"{parts.scheme}://{parts.netloc}"
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)  # every library's debug log (openai, httpx, prefdata) is searched too
    with Proxy(upstream) as a, Proxy(upstream) as b:
        result = run_build(_recipe([a.url, b.url], out, "PREFDATA_TEST_SERVED_KEY"))
        assert f"Bearer {SECRET}" in a.authorizations and f"Bearer {SECRET}" in b.authorizations  # the key was used
        served_a = sum(path.endswith("/completions") for _, path, _ in a.requests)
        served_b = sum(path.endswith("/completions") for _, path, _ in b.requests)
        assert served_a > 3 and served_b > 3  # both servers did the work (a also answered the probe)
    pairs = _pairs(out)
    assert result.stats["stages"][0]["rows_in"] == 3 and pairs
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written)  # the request cache is among the files searched
    for path in [*written, vllm_server.log]:
        assert SECRET.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err

    # One more server in front of the same model: the rebuild (checkpoints off) is answered from the
    # request cache: the new servers get the start-up probe on the first one, and no other request.
    with Proxy(upstream) as c, Proxy(upstream) as d:
        again = run_build(_recipe([c.url, d.url, vllm_server.url], out, None))
        assert sum(path.endswith("/completions") for _, path, _ in d.requests) == 0
        assert sum(path.endswith("/completions") for _, path, _ in c.requests) <= 5  # the probe
    assert _pairs(out) == pairs
    assert again.stats["request_cache"]["misses"] == 0 and again.stats["request_cache"]["hits"] > 0
