"""Pushing to the Hub, against a local Hub server on loopback (tests/hub_server.py): the real
huggingface_hub client code uploads, and `datasets.load_dataset(REPO_ID)` loads it back through
the same endpoint in a fresh process (HF_ENDPOINT is read at import)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import prefdata
from prefdata.builder import run_build
from prefdata.generators.on_policy import CITATION as ON_POLICY_CITATION
from prefdata.hub import HubError, push_to_hub, split_of
from prefdata.scorers.judge import CITATION as JUDGE_CITATION

from .conftest import FIXTURES, REPO
from .hub_server import LocalHub

TOKEN = "hf_prefdataTEST" + "x7Q2mZ9vK4pL8rT1"  # what a real token looks like; must never leak
LOADER = """
import json, sys
import datasets, prefdata
repo, config, out = sys.argv[1], sys.argv[2], sys.argv[3]
ds = datasets.load_dataset(repo, config)
via_api = prefdata.load(repo, config=config, split="train")
json.dump({"splits": {name: split.to_list() for name, split in ds.items()}, "api_train": via_api.to_list()},
          open(out, "w"))
"""


@pytest.fixture(scope="module")
def hub():
    server = LocalHub(token=TOKEN)
    server.start()
    yield server
    server.stop()


def hub_env(hub: LocalHub, tmp: Path, token_env: bool = True, **extra: str) -> dict[str, str]:
    """A child-process environment: our endpoint, a private HF_HOME and caches, the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp / "hf_home"), HF_DATASETS_CACHE=str(tmp / "ds_cache"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    if token_env:
        env["HF_TOKEN"] = TOKEN
    env.update(extra)
    return env


def load_back(hub: LocalHub, tmp: Path, repo_id: str, config: str = "default") -> dict:
    out = tmp / f"loaded-{config}.json"
    proc = subprocess.run([sys.executable, "-c", LOADER, repo_id, config, str(out)], env=hub_env(hub, tmp),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def commit_posts(hub: LocalHub, repo_id: str) -> list[int]:
    return [status for method, path, status, _ in hub.requests if path == f"/api/datasets/{repo_id}/commit/main"]


def card_parts(card: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def pairs_build(tmp_path_factory) -> Path:
    """A build without engines: pairs read from a fixture (one row rejected: empty response)."""
    out = tmp_path_factory.mktemp("pairs") / "out"
    run_build({"name": "pairs-small", "description": "Hand-written pairs for hub tests.",
               "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs",
                          "columns": {"chosen_score": "chosen_score", "rejected_score": "rejected_score"}},
               "output": {"dir": str(out), "shard_size": 5}})
    return out


@pytest.fixture(scope="module")
def recipe_push(hub, hf_engine, shared_data, tmp_path_factory):
    """`prefdata.build` of real prompts (../shared/data) with a [push] table: builds, then pushes."""
    tmp = tmp_path_factory.mktemp("recipe_push")
    recipe = {
        "name": "oasst-onpolicy", "description": "On-policy pairs from OASST prompts, judged by SmolLM2.",
        "source": {"path": str(shared_data / "oasst_prompt_lottery_150.jsonl"), "limit": 3},
        "engines": {"policy": {"backend": "transformers", "dtype": "float32"}},
        "stages": [{"type": "on_policy", "n": 2, "sampling": {"max_tokens": 8, "temperature": 1.0}}],
        "output": {"dir": str(tmp / "out"), "shard_size": 2},
        "push": {"repo_id": "tester/oasst-pairs", "license": "apache-2.0", "tags": ["oasst"]},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.endpoint)
        mp.setenv("HF_TOKEN", TOKEN)
        result = run_build(recipe, engines={"policy": hf_engine})
    return result, tmp


@pytest.mark.realdata
def test_recipe_push_is_one_commit_and_loads_back_row_for_row(hub, recipe_push):
    result, tmp = recipe_push
    repo_id = "tester/oasst-pairs"
    assert result.pushed.repo_id == repo_id and result.pushed.splits == {"train": result.stats["output"]["rows"]}
    repo = hub.repo(repo_id)
    assert len(repo.commits) == 2 and len(commit_posts(hub, repo_id)) == 1  # repo creation + ONE commit with everything
    files = hub.files(repo_id)
    local_shards = sorted((result.out_dir / "data").glob("*.parquet"))
    assert len(local_shards) == 2
    for shard in local_shards:
        assert files[f"data/{shard.name}"] == shard.read_bytes()  # shards uploaded byte for byte
    assert json.loads(files["prefdata/default/recipe.json"]) == json.loads((result.out_dir / "recipe.json").read_text())
    assert "rejects.parquet" not in " ".join(files)
    assert all(authorised for method, path, _, authorised in hub.requests if method == "POST" and repo_id in path)

    loaded = load_back(hub, tmp, repo_id)
    local = prefdata.load(result.out_dir).to_list()
    assert len(local) > 0
    assert loaded["splits"].keys() == {"train"}
    assert loaded["splits"]["train"] == local  # row for row, every column, same order
    assert loaded["api_train"] == local  # prefdata.load(repo_id) goes through the same path


@pytest.mark.realdata
def test_card_has_metadata_recipe_counts_citations_and_no_secret(hub, recipe_push):
    result, _ = recipe_push
    card = hub.files("tester/oasst-pairs")["README.md"].decode()
    meta, body = card_parts(card)
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["text-generation"]
    assert {"prefdata", "dpo", "preference", "oasst"} <= set(meta["tags"]) and meta["pretty_name"] == "oasst-onpolicy"
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    info = meta["dataset_info"]
    assert [f["name"] for f in info["features"]] == prefdata.load(result.out_dir).column_names
    assert info["splits"] == [{"name": "train", "num_bytes": info["splits"][0]["num_bytes"],
                               "num_examples": result.stats["output"]["rows"]}]
    # the resolved recipe, exactly as recipe.json holds it
    recipe_block = re.search(r"```json\n(.*?)\n```", body, re.DOTALL).group(1)
    assert json.loads(recipe_block) == json.loads((result.out_dir / "recipe.json").read_text())
    stage = result.stats["stages"][0]
    assert f"| 0: `on_policy` | {stage['rows_in']} | {stage['rows_out']} |" in body
    assert ON_POLICY_CITATION in body and JUDGE_CITATION in body  # every method the recipe ran
    assert "embedded:smollm2-135m-instruct" in body  # the models used (stats.json engines)
    for name, content in hub.files("tester/oasst-pairs").items():
        assert TOKEN.encode() not in content, name
    assert TOKEN not in json.dumps(result.stats)


def test_card_reports_drops_epsilon_and_judge_consistency(hub, pairs_build, tmp_path, monkeypatch):
    """The card renders the estimates contract of stats.json (written by filters in later issues)."""
    build = tmp_path / "build"
    build.mkdir()
    for item in pairs_build.rglob("*"):
        if item.is_file():
            (build / item.relative_to(pairs_build)).parent.mkdir(parents=True, exist_ok=True)
            (build / item.relative_to(pairs_build)).write_bytes(item.read_bytes())
    stats = json.loads((build / "stats.json").read_text())
    stats["estimates"] = {"flip_rate": {"epsilon": 0.137, "interval": [0.09, 0.18], "method": "strength-sign share"},
                          "judge": {"position_consistency": 0.82}}
    (build / "stats.json").write_text(json.dumps(stats))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(build, "tester/estimates")
    _, body = card_parts(hub.files("tester/estimates")["README.md"].decode())
    assert "ε = 0.137, interval [0.09, 0.18] (method: strength-sign share)" in body
    assert "`estimates.judge.position_consistency`: 0.82" in body
    assert "| read | empty_text | 1 |" in body  # the fixture's empty response, by reason


def test_cli_push_token_file_splits_private_config_and_debug_logs(hub, pairs_build, tmp_path):
    """`prefdata push` in a subprocess: token from the token file only, debug logging on, a test split,
    a private repo and a named config; then a second config lands next to the first."""
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text(TOKEN)
    env = hub_env(hub, tmp_path, token_env=False, HF_HUB_VERBOSITY="debug")
    repo_id = "tester/pairs-private"
    cmd = [sys.executable, "-m", "prefdata", "push", str(pairs_build), repo_id, "--private", "--config-name", "small",
           "--test-size", "0.5", "--license", "cc-by-4.0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TOKEN not in proc.stdout + proc.stderr
    assert "pushed tester/pairs-private (config small: train 7, test 4)" in proc.stderr
    repo = hub.repo(repo_id)
    assert repo.private and len(repo.commits) == 2
    # 3 local shards (q0-q4, q5-q10 less the rejected q8, q11); empty parts are not written
    assert sorted(p for p in hub.files(repo_id) if p.endswith(".parquet")) == [
        "small/test-00000.parquet", "small/test-00001.parquet", "small/train-00000.parquet", "small/train-00001.parquet"]
    # private: invisible without the token
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{hub.endpoint}/api/datasets/{repo_id}")
    assert info.value.code == 404

    loaded = load_back(hub, tmp_path, repo_id, "small")
    local = {r["id"]: r for r in prefdata.load(pairs_build).to_list()}
    train, test = loaded["splits"]["train"], loaded["splits"]["test"]
    assert sorted(r["id"] for r in train + test) == sorted(local)  # every pair once
    assert all(local[r["id"]] == r for r in train + test)
    assert {r["prompt_id"] for r in train}.isdisjoint({r["prompt_id"] for r in test})
    assert all(split_of(r["prompt_id"], 0, 0.5) == "test" for r in test)

    # a second config keeps the first one's files, metadata and card section
    proc = subprocess.run([sys.executable, "-m", "prefdata", "push", str(pairs_build), repo_id, "--config-name", "all"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = hub.files(repo_id)
    assert "small/train-00000.parquet" in files and "all/train-00000.parquet" in files
    meta, body = card_parts(files["README.md"].decode())
    assert [c["config_name"] for c in meta["configs"]] == ["all", "small"]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["all", "small"]
    assert "<!-- prefdata:config small -->" in body and "<!-- prefdata:config all -->" in body
    assert 'load_dataset("tester/pairs-private", "small")' in body
    assert len(load_back(hub, tmp_path, repo_id, "all")["splits"]["train"]) == len(local)


def test_repush_replaces_stale_shards_in_the_same_commit(hub, pairs_build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(pairs_build, "tester/repush")
    assert sum(p.startswith("data/") for p in hub.files("tester/repush")) == 3
    push_to_hub(pairs_build, "tester/repush")  # same folder again: the card is deterministic, nothing changes
    assert len(hub.repo("tester/repush").commits) == 2
    rebuilt = tmp_path / "rebuilt"
    run_build({"name": "pairs-small", "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs"},
               "output": {"dir": str(rebuilt), "shard_size": 100}})
    push_to_hub(rebuilt, "tester/repush")
    assert len(hub.repo("tester/repush").commits) == 3
    assert [p for p in hub.files("tester/repush") if p.startswith("data/")] == ["data/train-00000.parquet"]


def test_retryable_errors_are_retried_with_backoff_others_fail_in_one_line(hub, pairs_build, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    sleeps: list[float] = []
    monkeypatch.setattr("prefdata.hub.time.sleep", sleeps.append)  # only the wait is skipped; the HTTP is real
    hub.fail_next["commit"] = [503, 429]
    result = push_to_hub(pairs_build, "tester/flaky", backoff=0.5)
    assert commit_posts(hub, "tester/flaky") == [503, 429, 200]
    assert sleeps == [0.5, 1.0]  # exponential backoff
    assert len(hub.repo("tester/flaky").commits) == 2 and result.commit_oid == hub.repo("tester/flaky").head.oid

    hub.fail_next["commit"] = [403]
    with pytest.raises(HubError) as info:
        push_to_hub(pairs_build, "tester/forbidden", backoff=0.5)
    message = str(info.value)
    assert "cannot commit the files: the Hub answered 403" in message and "\n" not in message
    assert TOKEN not in message and sleeps == [0.5, 1.0]  # not retried
    assert len(hub.repo("tester/forbidden").commits) == 1

    hub.fail_next["commit"] = [502, 502, 502]
    with pytest.raises(HubError, match="still failing after 2 retries"):
        push_to_hub(pairs_build, "tester/forbidden", max_retries=2, backoff=0.5)
    assert sleeps == [0.5, 1.0, 0.5, 1.0] and len(hub.repo("tester/forbidden").commits) == 1


def test_every_retryable_status_is_retried_408_included(hub, pairs_build, monkeypatch):
    """The statuses retried with backoff: 408, 429, 500, 502, 503 and 504, each in turn on one push."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    sleeps: list[float] = []
    monkeypatch.setattr("prefdata.hub.time.sleep", sleeps.append)
    statuses = [408, 429, 500, 502, 503, 504]
    hub.fail_next["commit"] = list(statuses)
    result = push_to_hub(pairs_build, "tester/flaky-all", max_retries=len(statuses), backoff=0.5)
    assert commit_posts(hub, "tester/flaky-all") == [*statuses, 200]
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert result.commit_oid == hub.repo("tester/flaky-all").head.oid


def test_push_uploads_the_stats_in_the_same_commit(hub, pairs_build, monkeypatch):
    """README: push uploads the shards, the resolved recipe, the stats and the card in ONE commit."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(pairs_build, "tester/with-stats", config_name="small")
    repo = hub.repo("tester/with-stats")
    assert len(repo.commits) == 2 and len(commit_posts(hub, "tester/with-stats")) == 1  # creation + the push
    files = repo.commits[1].files
    assert json.loads(files["prefdata/small/stats.json"]) == json.loads((pairs_build / "stats.json").read_text())
    assert json.loads(files["prefdata/small/recipe.json"]) == json.loads((pairs_build / "recipe.json").read_text())
    assert "README.md" in files and any(p.startswith("small/") and p.endswith(".parquet") for p in files)
    assert "prefdata/small/stats.json" not in repo.commits[0].files


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("network", ["refused", "silent", "offline"])
def test_no_network_fails_fast_with_one_line_and_leaves_the_folder_untouched(hub, pairs_build, tmp_path, network):
    """refused: nothing listens; silent: a host that accepts the connection and never answers
    (a black-holed network); offline: HF_HUB_OFFLINE=1."""
    before = snapshot(pairs_build)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1] if network == "silent" else _closed_port()
        extra = {"HF_ENDPOINT": f"http://127.0.0.1:{port}"}
        if network == "offline":
            extra["HF_HUB_OFFLINE"] = "1"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "prefdata", "push", str(pairs_build), "tester/nowhere"],
                              env=hub_env(hub, tmp_path, **extra), capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    expected = {"refused": "cannot reach the Hugging Face Hub at http://127.0.0.1:",
                "silent": "cannot reach the Hugging Face Hub at http://127.0.0.1:",
                "offline": "HF_HUB_OFFLINE is set"}[network]
    assert expected in lines[0] and f"{pairs_build} is unchanged" in lines[0]
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stdout + proc.stderr
    assert elapsed < (30 if network == "silent" else 15)  # interpreter start-up included; one bounded try
    assert snapshot(pairs_build) == before


def test_token_inside_the_recipe_is_refused_before_upload(hub, pairs_build, tmp_path, monkeypatch):
    leaky = tmp_path / "leaky"
    run_build({"name": "leaky", "description": f"oops {TOKEN}",
               "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs"}, "output": {"dir": str(leaky)}})
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HubError) as info:
        push_to_hub(leaky, "tester/leaky")
    assert "refusing to push: README.md would contain the Hub token" in str(info.value)
    assert TOKEN not in str(info.value)
    assert len(hub.repo("tester/leaky").commits) == 1  # created, nothing committed


def test_missing_token_fails_before_any_request(hub, pairs_build, tmp_path):
    seen = len(hub.requests)
    proc = subprocess.run([sys.executable, "-m", "prefdata", "push", str(pairs_build), "tester/x"],
                          env=hub_env(hub, tmp_path, token_env=False), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no Hugging Face token found" in proc.stderr
    assert [r for r in hub.requests[seen:] if "/api/agent-harnesses" not in r[1]] == []


def test_not_a_build_folder_names_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(HubError, match="no Parquet shards under data/"):
        push_to_hub(tmp_path, "tester/x", token="t")
    pq.write_table(pa.table({"id": ["a"], "prompt_id": ["p"]}), tmp_path / "data" / "train-00000.parquet")
    with pytest.raises(HubError, match=r"recipe.json: missing"):
        push_to_hub(tmp_path, "tester/x", token="t")


def test_cli_build_with_push_table_and_no_push(tmp_path, monkeypatch):
    """A [push] table pushes after the build; --no-push skips it; a failed push keeps the local build."""
    from typer.testing import CliRunner

    from prefdata.cli import app

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "r"\n[source]\npath = "{FIXTURES / "pairs_small.jsonl"}"\nkind = "pairs"\n'
                      f'[output]\ndir = "{tmp_path / "out"}"\n[push]\nrepo_id = "tester/r"\n')
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["build", str(recipe), "-q", "--no-push"])
    assert result.exit_code == 0, result.output
    assert "pushed" not in result.output and (tmp_path / "out" / "stats.json").is_file()
    result = CliRunner().invoke(app, ["build", str(recipe), "-q"])
    assert result.exit_code == 2 and "cannot reach the Hugging Face Hub" in result.output
    assert len(prefdata.load(tmp_path / "out")) == 11  # the build itself completed before the push
    recipe.write_text(recipe.read_text().replace('repo_id = "tester/r"', 'repo_id = "not a repo"'))
    result = CliRunner().invoke(app, ["build", str(recipe), "-q"])
    assert result.exit_code == 2 and "push.repo_id: String should match pattern" in result.output
