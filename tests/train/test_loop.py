"""The loop: a real model learns the held-out preference; accumulation, LoRA, checkpoints, epsilon
auto, and the extra terms (margin, rationale, NLL, edit spans) do what they say."""

from __future__ import annotations

import json
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import prefdata
from prefdata.train import TrainConfig, train
from prefdata.train.data import EncodeSpec, collate, encode_pairs
from prefdata.train.logps import load_causal_lm, response_logps


def test_smollm2_training_raises_the_heldout_implicit_reward(hh_dataset, tmp_path):
    """The embedded SmolLM2-135M, 3 steps of DPO on 9 pairs: on the 3 held-out pairs (never trained on)
    the chosen-minus-rejected implicit reward goes from 0 (policy == reference) to clearly positive."""
    result = train(TrainConfig(dataset=hh_dataset, output_dir=tmp_path / "run", holdout=0.3, max_steps=3, batch_size=2,
                               lr=1e-5, warmup_ratio=0.0, beta=0.1, save_final=False), progress=False)
    before, after = result.eval_before, result.eval_after
    assert before["pairs"] == after["pairs"] == 3 and result.counts["pairs"] == 9
    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert after["reward_margin"] > 0.02
    assert after["reward_accuracy"] >= 2 / 3
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert result.metrics[-1]["rewards/margin"] > 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["after"]["reward_margin"] == after["reward_margin"]


def test_gradient_accumulation_equals_the_larger_batch(hh_dataset, tiny_model_dir, tmp_path):
    common = {"dataset": hh_dataset, "model": str(tiny_model_dir), "max_steps": 2, "lr": 1e-3, "warmup_ratio": 0.0,
              "save_final": False, "reference": "model"}
    whole = train(TrainConfig(**common, output_dir=tmp_path / "a", batch_size=4), progress=False)
    accumulated = train(TrainConfig(**common, output_dir=tmp_path / "b", batch_size=2, grad_accum=2), progress=False)
    for a, b in zip(whole.metrics, accumulated.metrics):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["pairs"] == b["pairs"] == 4 * a["step"]


def test_checkpoints_are_plain_state_dicts_that_reload(hh_dataset, tiny_model_dir, tmp_path):
    result = train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=2,
                               batch_size=4, lr=1e-2, save_every=1), progress=False)
    run = result.run_dir
    for folder in (run / "checkpoint-1", run / "final"):
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert json.loads((folder / "prefdata_train.json").read_text())["train_config"]["lr"] == 1e-2
    assert not list(run.glob("**/*.bin")) and not list(run.glob("**/*.pt"))  # no pickles
    device = torch.device("cpu")
    start, tokenizer, _ = load_causal_lm(str(tiny_model_dir), device)
    ckpt, _, _ = load_causal_lm(str(run / "checkpoint-1"), device)
    final, _, _ = load_causal_lm(str(run / "final"), device)
    batch = collate(encode_pairs(prefdata.load(hh_dataset).select(range(4)), tokenizer, EncodeSpec()).examples,
                    tokenizer.pad_token_id)
    with torch.no_grad():
        logps = [response_logps(m, batch) for m in (start, ckpt, final)]
    assert not torch.allclose(logps[0], logps[1]) and not torch.allclose(logps[1], logps[2])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_pairs"] == 12


def test_lora_trains_adapters_only_against_the_disabled_adapter_reference(hh_dataset, tiny_model_dir, tmp_path):
    result = train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=3,
                               batch_size=4, lr=5e-2, warmup_ratio=0.0, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}),
                   progress=False)
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # adapters start at zero: policy == reference
    assert result.metrics[-1]["rewards/margin"] != 0
    final, _, _ = load_causal_lm(str(tmp_path / "run" / "final"), torch.device("cpu"))  # merged: a plain model
    base, _, _ = load_causal_lm(str(tiny_model_dir), torch.device("cpu"))
    changed = {n for (n, p), (_, q) in zip(final.named_parameters(), base.named_parameters()) if not torch.equal(p, q)}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_robust_with_epsilon_auto_reads_the_dataset_estimate(hh_dataset, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hh_dataset, data)
    stats = json.loads((data / "stats.json").read_text())
    stats["estimates"] = {"flip_rate": {"epsilon": 0.15, "interval": [0.1, 0.2], "method": "injected"}}
    (data / "stats.json").write_text(json.dumps(stats))
    train(TrainConfig(dataset=data, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=1, batch_size=4,
                      loss="robust", epsilon="auto", save_final=False), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["epsilon"] == "auto" and config["epsilon_value"] == 0.15
    assert "stats.json" in config["epsilon_source"] and "injected" in config["epsilon_source"]


def _with_extras(hh_dataset, path):
    """The HH pairs plus the columns later issues write: margin, rationale (+ order) and RISE edit spans."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((hh_dataset / "data").glob("*.parquet"))])
    rows = table.to_pylist()
    span_type = pa.list_(pa.struct([("side", pa.string()), ("char_start", pa.int32()), ("char_end", pa.int32())]))
    for i, row in enumerate(rows):
        row["margin"] = 0.5 + 0.1 * i
        row["rationale"] = "The first is accurate and helpful; the other is not." if i % 2 == 0 else None
        row["rationale_order"] = "rejected_first" if i % 4 == 0 else "chosen_first"
        text = row["rejected"][-1]["content"]
        row["metadata"] = {**row["metadata"], "edit_spans": [{"side": "rejected", "char_start": 0, "char_end": min(5, len(text))}]}
    metadata_type = pa.struct(list(table.schema.field("metadata").type) + [pa.field("edit_spans", span_type)])
    schema = pa.schema([f if f.name != "metadata" else pa.field("metadata", metadata_type) for f in table.schema]
                       + [pa.field("rationale", pa.string()), pa.field("rationale_order", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_margin_rationale_nll_and_edit_span_terms(hh_dataset, tiny_model_dir, tmp_path):
    data = _with_extras(hh_dataset, tmp_path / "extras.parquet")
    result = train(TrainConfig(dataset=data, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=2,
                               batch_size=4, lr=1e-3, loss="margin", nll_weight=0.5, edit_span_weight=2.0,
                               save_final=False), progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rationale_weight_value"] == 0.1  # the rationale column switches RDPO's default gamma on
    assert config["reference_source"] == "model"
    assert config["counts"]["train"]["with_rationale"] == 6 and config["counts"]["train"]["with_edit_spans"] == 12
    first = result.metrics[0]
    # total = preference + rationale + 0.5 * NLL, each a mean over the pairs
    assert first["loss"] == pytest.approx(first["pref_loss"] + first["rationale_loss"] + 0.5 * first["nll"], rel=1e-5)
    # with a margin m > 0 and policy == reference, the margin loss is ell(-m) > log 2
    assert first["pref_loss"] > math.log(2)
    assert first["rationale_loss"] > 0 and first["nll"] > 0


def test_margin_loss_needs_its_column(hh_dataset, tiny_model_dir, tmp_path):
    from prefdata.train import TrainError

    with pytest.raises(TrainError, match="loss 'margin' needs the column 'strength_mean'"):
        train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "r", loss="margin",
                          margin_column="strength_mean", max_steps=1), progress=False)
    # the reader's null margins (no scores in HH) are rejected per row with their ids, never invented
    with pytest.raises(TrainError, match="no usable training pairs"):
        train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "r2", loss="margin",
                          max_steps=1), progress=False)
    rejects = pq.read_table(tmp_path / "r2" / "rejects.parquet").to_pylist()
    assert len(rejects) == 12 and {(r["reason"], r["field"]) for r in rejects} == {("missing_field", "margin")}


def test_bf16_autocast_runs_on_cpu(hh_dataset, tiny_model_dir, tmp_path):
    result = train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=2,
                               batch_size=4, lr=1e-3, precision="bf16", device="cpu", save_final=False), progress=False)
    assert all(math.isfinite(m["loss"]) for m in result.metrics)
    # bf16 log-probs of the same weights differ a little: step 0's loss is near, not exactly, log 2
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=0.05)


# --- what prepare_run switches on, the margin scale, host syncs, LoRA checkpoints ---------------


def _lean_mlps(model):
    from prefdata.train.lean_mlp import _lean_forward, is_swiglu

    mlps = [m for m in model.modules() if is_swiglu(m)]
    return len(mlps), sum(getattr(m.forward, "__func__", None) is _lean_forward for m in mlps)


def test_prepare_run_packs_and_leans_by_default_and_checkpoints_only_when_asked(hh_dataset, tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from prefdata.train import logps
    from prefdata.train.loop import prepare_run
    from prefdata.train.packing import packed_attention

    common = {"dataset": hh_dataset, "model": str(tiny_model_dir), "max_steps": 1, "reference": "model"}
    run = prepare_run(TrainConfig(output_dir=tmp_path / "default", **common))
    assert packed_attention(run.model)
    assert _lean_mlps(run.model) == (2, 2)  # both layers' MLPs take the lean backward
    assert not run.model.is_gradient_checkpointing
    # the frozen reference copy runs packed too
    packed_rows: list[int] = []
    real = logps.packed_hidden_states
    monkeypatch.setattr(logps, "packed_hidden_states",
                        lambda decoder, ids, mask: packed_rows.append(ids.shape[0]) or real(decoder, ids, mask))
    run.reference(collate(run.train_set.examples[:2], run.pad_id))
    assert packed_rows == [4]

    off = prepare_run(TrainConfig(output_dir=tmp_path / "off", padding_free=False, lean_mlp=False,
                                  gradient_checkpointing=True, **common))
    assert not packed_attention(off.model)
    assert _lean_mlps(off.model) == (2, 0)
    assert off.model.is_gradient_checkpointing


def test_margin_scale_multiplies_the_margin_column(hh_dataset, tiny_model_dir, tmp_path):
    """loss 'margin' with margin_scale 2: the loop's loss is ell(h - 2 m), h = beta * Delta, as margin_loss computes it."""
    from prefdata.train.loop import batch_loss, prepare_run
    from prefdata.train.losses import margin_loss

    data = _with_extras(hh_dataset, tmp_path / "extras.parquet")  # margins 0.5 + 0.1 i
    run = prepare_run(TrainConfig(dataset=data, model=str(tiny_model_dir), output_dir=tmp_path / "run", loss="margin",
                                  margin_scale=2.0, rationale_weight=0.0, beta=0.5, max_steps=1, reference="model"))
    with torch.no_grad():  # move the policy off the reference, so h != 0
        torch.manual_seed(0)
        for p in run.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate(run.train_set.examples[:4], run.pad_id)
    assert batch["margin"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    with torch.no_grad():
        loss, metrics = batch_loss(run.model, batch, run.reference, **run.loss_args)
        B = batch["n_pairs"]
        policy = response_logps(run.model, batch)
        ref_chosen, ref_rejected = run.reference(batch)
        args = (policy[:B], policy[B : 2 * B], ref_chosen, ref_rejected)
        expected = margin_loss(*args, beta=0.5, margin=2.0 * batch["margin"]).losses.mean()
        unscaled = margin_loss(*args, beta=0.5, margin=batch["margin"]).losses.mean()
    h = 0.5 * ((policy[:B] - ref_chosen) - (policy[B : 2 * B] - ref_rejected))
    assert h.abs().min() > 1e-3
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(float(torch.nn.functional.softplus(2.0 * batch["margin"] - h).mean()), rel=1e-5)
    assert abs(float(expected) - float(unscaled)) > 0.1


def test_metrics_are_read_to_the_host_only_on_logged_steps(hh_dataset, tiny_model_dir, tmp_path, monkeypatch):
    from prefdata.train import loop

    reads: list[int] = []
    real_host_metrics, real_step = loop.host_metrics, loop.optimizer_step

    def counting_host_metrics(step_metrics):
        reads.append(len(step_metrics))
        return real_host_metrics(step_metrics)

    def checked_step(run, stream, step):
        lr, step_metrics, grad_norm, pairs = real_step(run, stream, step)
        assert all(isinstance(v, torch.Tensor) for m in step_metrics for v in m.values())  # still on the device
        return lr, step_metrics, grad_norm, pairs

    monkeypatch.setattr(loop, "host_metrics", counting_host_metrics)
    monkeypatch.setattr(loop, "optimizer_step", checked_step)
    result = train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=5,
                               batch_size=2, grad_accum=2, lr=1e-3, log_every=2, save_final=False), progress=False)
    assert [m["step"] for m in result.metrics] == [2, 4, 5]  # every 2nd step, and the last
    assert reads == [2, 2, 2]  # one read per logged step, of its 2 micro-batches
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 5]


def test_lora_checkpoints_hold_the_adapter(hh_dataset, tiny_model_dir, tmp_path):
    train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "run", max_steps=2,
                      batch_size=4, lr=5e-2, warmup_ratio=0.0, save_every=1,
                      lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}), progress=False)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter, not a merged copy
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()  # final/ is merged
    # the adapter folder loads on its base model and differs from it
    device = torch.device("cpu")
    base, tokenizer, _ = load_causal_lm(str(tiny_model_dir), device)
    adapted, _, _ = load_causal_lm(str(checkpoint), device)
    batch = collate(encode_pairs(prefdata.load(hh_dataset).select(range(2)), tokenizer, EncodeSpec()).examples,
                    tokenizer.pad_token_id)
    with torch.no_grad():
        assert not torch.allclose(response_logps(base, batch), response_logps(adapted, batch))
