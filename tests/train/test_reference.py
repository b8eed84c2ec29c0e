"""The `reference_logps` build stage: vLLM prompt log-probs, a transformers forward and the trainer's
own on-the-fly reference give the same sums; training from the columns equals training with a
reference model in memory."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import prefdata
from prefdata.builder import run_build
from prefdata.engines import EngineConfig, load_engine
from prefdata.train import TrainConfig, TrainError, train
from prefdata.train.data import EncodeSpec, collate, encode_pairs
from prefdata.train.logps import model_reference

from ..conftest import FIXTURES


def _build(out, engine, limit=6):
    recipe = {"name": "ref", "source": {"path": str(FIXTURES / "hh_train_small.jsonl"), "kind": "hh", "limit": limit},
              "stages": [{"type": "reference_logps"}], "output": {"dir": str(out)}}
    return run_build(recipe, engines={"policy": engine})


def _on_the_fly(model, tokenizer, dataset):
    examples = encode_pairs(dataset, tokenizer, EncodeSpec()).examples
    batch = collate(examples, tokenizer.pad_token_id)
    chosen, rejected = model_reference(model)(batch)
    return chosen.double().numpy(), rejected.double().numpy()


@pytest.fixture(scope="module")
def hf_built(hf_engine, tmp_path_factory):
    result = _build(tmp_path_factory.mktemp("ref_hf") / "out", hf_engine)
    return prefdata.load(result.out_dir), result


def test_stage_adds_reference_columns(hf_built, hf_engine):
    ds, result = hf_built
    assert ds.column_names[-3:] == ["ref_chosen_logps", "ref_rejected_logps", "ref_logps_model"]
    assert set(ds["ref_logps_model"]) == {hf_engine.model_id}
    chosen = np.array(ds["ref_chosen_logps"])
    assert np.all(chosen < 0) and np.all(np.isfinite(chosen))
    assert result.stats["stages"][0]["counters"]["ref_logps_rows"] == len(ds) == 6
    schema = pq.read_schema(next((result.out_dir / "data").glob("*.parquet")))
    assert str(schema.field("ref_chosen_logps").type) == "double"


def test_transformers_columns_equal_the_trainers_reference(hf_built, hf_engine):
    ds, _ = hf_built
    chosen, rejected = _on_the_fly(hf_engine.model, hf_engine.tokenizer, ds)
    np.testing.assert_allclose(ds["ref_chosen_logps"], chosen, rtol=0, atol=2e-3)
    np.testing.assert_allclose(ds["ref_rejected_logps"], rejected, rtol=0, atol=2e-3)


@pytest.mark.vllm
def test_vllm_columns_agree_with_transformers_and_the_trainer(hf_built, hf_engine, vllm_engine, tmp_path):
    ds_hf, _ = hf_built
    ds_vllm = prefdata.load(_build(tmp_path / "out", vllm_engine).out_dir)
    assert ds_vllm["id"] == ds_hf["id"]
    # per token the engines agree to ~2e-3 (float32); the sums here run over 10-40 tokens
    np.testing.assert_allclose(ds_vllm["ref_chosen_logps"], ds_hf["ref_chosen_logps"], rtol=1e-3, atol=0.05)
    np.testing.assert_allclose(ds_vllm["ref_rejected_logps"], ds_hf["ref_rejected_logps"], rtol=1e-3, atol=0.05)
    chosen, _ = _on_the_fly(hf_engine.model, hf_engine.tokenizer, ds_vllm)
    np.testing.assert_allclose(ds_vllm["ref_chosen_logps"], chosen, rtol=1e-3, atol=0.05)


def test_training_from_columns_equals_training_with_a_reference_model(tiny_model_dir, tmp_path):
    engine = load_engine(EngineConfig(backend="transformers", model=str(tiny_model_dir), dtype="float32"))
    out = _build(tmp_path / "data", engine, limit=8).out_dir
    common = {"dataset": out, "model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "lr": 1e-3,
              "warmup_ratio": 0.0, "save_final": False}
    with_columns = train(TrainConfig(**common, output_dir=tmp_path / "a", reference="columns"), progress=False)
    with_model = train(TrainConfig(**common, output_dir=tmp_path / "b", reference="model"), progress=False)
    assert with_columns.metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # policy == reference at step 0
    for a, b in zip(with_columns.metrics, with_model.metrics):
        for key in ("loss", "rewards/margin", "rewards/chosen", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert with_columns.metrics[-1]["rewards/margin"] > 0  # it learned something, identically both ways
    auto = train(TrainConfig(**common, output_dir=tmp_path / "c"), progress=False)
    assert '"reference_source": "columns"' in (tmp_path / "c" / "config.json").read_text()
    assert auto.metrics[-1]["loss"] == pytest.approx(with_columns.metrics[-1]["loss"], rel=1e-5)
    # Columns computed with another model are refused, naming both.
    with pytest.raises(TrainError, match=r"ref_logps_model: reference log-probs were computed with .*tiny-llama"):
        train(TrainConfig(**{**common, "model": None}, output_dir=tmp_path / "d", reference="columns"), progress=False)
