"""`[source] hub = "org/name"` against the local Hub server (tests/hub_server.py): a dataset is pushed
with huggingface_hub, then `prefdata build` reads it by repo id in a fresh process (HF_ENDPOINT is
read when huggingface_hub is imported), with the preset, a revision pin and streaming."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.hub_server import LocalHub

from .preset_fixtures import NECTAR, ULTRAFEEDBACK_BINARIZED, nectar_rows, ultrafeedback_binarized_rows

TOKEN = "hf_prefdataTEST" + "sRc4Hub9Zq2W"  # must never appear in output


@pytest.fixture(scope="module")
def hub():
    server = LocalHub(token=TOKEN)
    server.start()
    yield server
    server.stop()


def push_rows(hub: LocalHub, repo_id: str, rows: list[dict], schema: pa.Schema, message: str,
              split: str = "train") -> str:
    """Commit one Parquet file as the split (train by default); returns the commit id."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    info = api.upload_file(path_or_fileobj=buffer.getvalue(), path_in_repo=f"data/{split}-00000-of-00001.parquet",
                           repo_id=repo_id, repo_type="dataset", commit_message=message)
    return info.oid


def env_for(hub: LocalHub, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp / "hf_home"), HF_DATASETS_CACHE=str(tmp / "ds_cache"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO), HF_TOKEN=TOKEN)
    env.update(extra)
    return env


def prefdata_build(recipe: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefdata", "build", str(recipe), "--quiet", *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


def write_recipe(path: Path, source: dict, stages: str = "") -> Path:
    lines = ['name = "hub-source"', "", "[source]"] + [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    path.write_text("\n".join(lines) + "\n" + stages, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def nectar_repo(hub):
    """tester/nectar-mini: commit 1 holds the first Nectar row only, commit 2 both rows."""
    rows = nectar_rows()
    first = push_rows(hub, "tester/nectar-mini", rows[:1], NECTAR, "one row")
    second = push_rows(hub, "tester/nectar-mini", rows, NECTAR, "two rows")
    return first, second


def out_rows(out: Path) -> list[dict]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("*.parquet"))])
    return sorted(table.to_pylist(), key=lambda r: r["prompt_id"])


def test_example_recipe_builds_from_the_hub_by_repo_id_and_records_the_commit(hub, nectar_repo, tmp_path):
    _, head = nectar_repo
    env = env_for(hub, tmp_path, PREFDATA_HUB_DATASET="tester/nectar-mini")
    proc = prefdata_build(REPO / "examples" / "curate_hub.toml", env, "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TOKEN not in proc.stdout + proc.stderr
    rows = out_rows(tmp_path / "out")
    assert [r["prompt_id"] for r in rows] == ["train-0", "train-1"]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Teal, a calm blue-green."}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "Car."}]
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert recipe["source"]["revision"] == head  # the commit read, not "main" or nothing
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["source"]["hub"] == "tester/nectar-mini" and stats["source"]["revision"] == head
    assert stats["source"]["streaming"] is True and stats["source"]["license"] == "apache-2.0"
    assert TOKEN not in json.dumps(recipe) + json.dumps(stats)


def test_revision_pin_reads_the_pinned_commit_download_mode(hub, nectar_repo, tmp_path):
    first, head = nectar_repo
    recipe = write_recipe(tmp_path / "pinned.toml", {"hub": "tester/nectar-mini", "preset": "nectar", "revision": first,
                                                      "streaming": False})
    proc = prefdata_build(recipe, env_for(hub, tmp_path), "--output", str(tmp_path / "pinned"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["prompt_id"] for r in out_rows(tmp_path / "pinned")] == ["train-0"]  # commit 1 had one row
    assert json.loads((tmp_path / "pinned" / "recipe.json").read_text())["source"]["revision"] == first
    # the same recipe at the head reads both rows
    recipe = write_recipe(tmp_path / "head.toml", {"hub": "tester/nectar-mini", "preset": "nectar", "streaming": False})
    proc = prefdata_build(recipe, env_for(hub, tmp_path), "--output", str(tmp_path / "head"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(out_rows(tmp_path / "head")) == 2
    assert json.loads((tmp_path / "head" / "recipe.json").read_text())["source"]["revision"] == head


# An engine that cannot load: if the build got as far as loading engines, the error would be about it.
ENGINE_STAGE = """
[engines.policy]
backend = "transformers"
model = "/nonexistent/model"

[[stages]]
type = "on_policy"
n = 2
"""


@pytest.mark.parametrize("case", ["missing_repo", "missing_revision", "missing_config", "missing_split", "offline",
                                  "unreachable"])
def test_hub_errors_are_one_line_before_any_engine_loads(hub, nectar_repo, tmp_path, case):
    source = {"hub": "tester/nectar-mini", "kind": "prompts"}
    extra: dict[str, str] = {}
    expected = {"missing_repo": "dataset repository not found", "missing_revision": "revision 'v9' not found",
                "missing_config": "cannot load config 'no_such_config', split 'train'",
                "missing_split": "cannot load config 'default', split 'validation'",
                "offline": "HF_HUB_OFFLINE is set", "unreachable": "cannot reach the Hub"}[case]
    if case == "missing_repo":
        source["hub"] = "tester/no-such-dataset"
    elif case == "missing_revision":
        source["revision"] = "v9"
    elif case == "missing_config":
        source["config"] = "no_such_config"
    elif case == "missing_split":
        source["split"] = "validation"
    elif case == "offline":
        extra["HF_HUB_OFFLINE"] = "1"
    else:
        extra["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port
        extra["HF_HUB_ETAG_TIMEOUT"] = "2"
    recipe = write_recipe(tmp_path / "bad.toml", source, ENGINE_STAGE)
    proc = prefdata_build(recipe, env_for(hub, tmp_path, **extra), "--output", str(tmp_path / "out"))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert expected in lines[0] and "hub:tester/" in lines[0]
    assert "nonexistent" not in proc.stderr and TOKEN not in proc.stderr + proc.stdout


def test_a_preset_reads_its_default_split_when_none_is_given(hub, tmp_path):
    """README: `split` defaults to the preset's (ultrafeedback_binarized: train_prefs). The repository
    has a `train` split too, with other rows: the build must read train_prefs."""
    rows = ultrafeedback_binarized_rows()
    push_rows(hub, "tester/ufb-mini", rows, ULTRAFEEDBACK_BINARIZED, "train_prefs", split="train_prefs")
    other = [{**row, "prompt_id": f"train-only-{i}"} for i, row in enumerate(rows)]
    push_rows(hub, "tester/ufb-mini", other, ULTRAFEEDBACK_BINARIZED, "train", split="train")
    recipe = write_recipe(tmp_path / "ufb.toml", {"hub": "tester/ufb-mini", "preset": "ultrafeedback_binarized"})
    proc = prefdata_build(recipe, env_for(hub, tmp_path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["prompt_id"] for r in out_rows(tmp_path / "out")] == ["a1f3", "b2c4"]  # c3d5: chosen == rejected
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["source"]["split"] == "train_prefs" and stats["source"]["config"] is None


def test_split_and_config_defaults_passed_to_the_hub(monkeypatch):
    """The split and config `open_hub` is asked for: the recipe's, else the preset's, else train and
    the dataset's default config (in-process, `open_hub` replaced by a recorder)."""
    import dataclasses

    import prefdata.schemas.hub_source as hub_source
    from prefdata.recipe import parse_recipe
    from prefdata.schemas.presets import PRESETS
    from prefdata.schemas.sources import read_one

    asked: list[tuple[str | None, str]] = []

    def fake_open_hub(repo, *, config, split, revision, streaming):
        asked.append((config, split))
        return hub_source.HubRows(label=f"{repo}/{split}", stem=split, rows=iter([]),
                                  info={"hub": repo, "config": config, "split": split})

    monkeypatch.setattr(hub_source, "open_hub", fake_open_hub)
    monkeypatch.setitem(PRESETS, "nectar", dataclasses.replace(PRESETS["nectar"], config="preset_cfg", split="preset_split"))

    def read(**source):
        read_one(parse_recipe({"source": {"hub": "org/name", **source}}).source.spec())
        return asked[-1]

    assert read(preset="ultrafeedback_binarized") == (None, "train_prefs")
    assert read(preset="ultrafeedback_binarized", split="test_prefs") == (None, "test_prefs")
    assert read(kind="prompts") == (None, "train")
    assert read(kind="prompts", config="cfg", split="dev") == ("cfg", "dev")
    assert read(preset="nectar") == ("preset_cfg", "preset_split")
    assert read(preset="nectar", config="mine", split="train") == ("mine", "train")
