"""The Python API for training jobs: load (folder, streaming), iter_batches, apply with a loaded
engine, and the docstring / examples/ code that shows them."""

from __future__ import annotations

import doctest
import json
import runpy

import datasets
import pytest

import prefdata
import prefdata.api
from prefdata.builder import run_build
from prefdata.generators.on_policy import OnPolicyConfig, OnPolicyGenerator

from .conftest import FIXTURES, REPO

ON_POLICY = {"type": "on_policy", "n": 2, "sampling": {"max_tokens": 8, "temperature": 1.0}}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "out"
    run_build({"name": "pairs", "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs"},
               "output": {"dir": str(out), "shard_size": 5}})
    return out


def test_docstring_examples_run():
    result = doctest.testmod(prefdata.api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0


def test_iter_batches_cross_shards_in_order(pairs_dir):
    rows = prefdata.load(pairs_dir).to_list()
    assert len(list((pairs_dir / "data").glob("*.parquet"))) == 3 and len(rows) == 11  # shards of 5, 5, 1
    batches = list(prefdata.iter_batches(pairs_dir, batch_size=4))
    assert [b.num_rows for b in batches] == [4, 4, 3]
    assert [r for b in batches for r in b.to_pylist()] == rows
    only = list(prefdata.iter_batches(pairs_dir, batch_size=100, columns=["id", "margin"]))
    assert len(only) == 1 and only[0].schema.names == ["id", "margin"]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(prefdata.iter_batches(pairs_dir, batch_size=0))


def test_load_streaming_and_errors(pairs_dir, tmp_path):
    stream = prefdata.load(pairs_dir, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert list(stream) == prefdata.load(pairs_dir).to_list()
    with pytest.raises(ValueError, match="one config and one split"):
        prefdata.load(pairs_dir, split="test")
    with pytest.raises(FileNotFoundError, match="no such build folder"):
        prefdata.load(tmp_path / "missing" / "deeper" / "dir")


def test_apply_equals_a_build_of_the_same_rows(hf_engine, tmp_path):
    """apply() on an in-memory prompt dataset gives the rows `prefdata build` writes for the same
    prompts, stage config, seed and shard size: the same stage contract, shard by shard."""
    build = run_build({"name": "b", "seed": 3, "source": {"path": str(FIXTURES / "prompts_small.jsonl"), "limit": 3},
                       "stages": [ON_POLICY], "output": {"dir": str(tmp_path / "b"), "shard_size": 2}},
                      engines={"policy": hf_engine})
    lines = (FIXTURES / "prompts_small.jsonl").read_text().splitlines()[:3]  # p-0 and p-2 share a prompt text
    prompts = datasets.Dataset.from_list([json.loads(line) for line in lines])
    assert isinstance(prompts[0]["prompt"], str)  # plain strings: apply turns them into chats like the reader
    applied = prefdata.apply(prompts, ON_POLICY, engines={"policy": hf_engine}, seed=3, shard_size=2)
    assert isinstance(applied, datasets.Dataset) and len(applied) > 0
    assert sorted(applied.to_list(), key=lambda r: r["id"]) == sorted(build.dataset.to_list(), key=lambda r: r["id"])
    assert hf_engine.model is not None  # the job's engine is not closed by apply


def test_apply_sets_rows_aside_with_reasons_on_a_dataset_view(hf_engine):
    prompts = datasets.Dataset.from_list([
        {"id": "a", "prompt": "Name one colour."},
        {"id": "b", "prompt": "   "},
        {"id": "c", "prompt": "Name one fruit."},
    ]).select([2, 1])  # a view with an indices mapping: only c and b
    stage = OnPolicyGenerator(OnPolicyConfig(**{k: v for k, v in ON_POLICY.items() if k != "type"}))
    with pytest.warns(UserWarning, match=r"1 row\(s\) set aside \(empty_text=1\)"):
        pairs, rejects = prefdata.apply(prompts, stage, engines={"policy": hf_engine}, with_rejects=True)
    assert set(pairs["prompt_id"]) <= {"c"}
    assert [(r["row"], r["reason"], r["field"]) for r in rejects] == [(1, "empty_text", "prompt")]
    assert json.loads(rejects[0]["payload"])["id"] == "b"


def test_apply_without_the_engine_it_needs_names_it():
    prompts = datasets.Dataset.from_list([{"id": "a", "prompt": "Hi"}])
    with pytest.raises(KeyError, match="engine 'policy' is not defined"):
        prefdata.apply(prompts, "on_policy")
    with pytest.raises(TypeError, match="must be a loaded prefdata Engine"):
        prefdata.apply(prompts, "on_policy", engines={"policy": "SmolLM2"})
    with pytest.raises(ValueError, match="unknown stage type 'nope'"):
        prefdata.apply(prompts, {"type": "nope"})


@pytest.mark.realdata
def test_example_apply_in_training_job_runs(hf_engine, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("PREFDATA_DATA", str(shared_data))
    main = runpy.run_path(str(REPO / "examples" / "apply_in_training_job.py"))["main"]
    pairs = main(engine=hf_engine, limit=2)
    assert set(pairs["prompt_id"]) <= {"oasst-lottery-000", "oasst-lottery-001"} and len(pairs) >= 1
    assert all(r["chosen"] != r["rejected"] and r["margin"] > 0 for r in pairs)
    assert "pairs," in capsys.readouterr().out
    assert hf_engine.model is not None


def test_prefdata_build_stays_callable_after_its_module_is_imported(tmp_path):
    """The build module is `prefdata.builder`: importing it leaves `prefdata.build` the function."""
    import types

    import prefdata.builder as build_module

    recipe = {"source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs"}, "output": {"dir": str(tmp_path)}}
    first, second = prefdata.build(recipe), prefdata.build(recipe)
    assert len(first) == len(second) == 11 and first.to_list() == second.to_list()
    assert isinstance(prefdata.build, types.FunctionType) and prefdata.builder is build_module
    assert type(prefdata) is types.ModuleType  # no module-class swap in the package
