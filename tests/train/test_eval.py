"""Ranking accuracy (summed, length-normalised), reward accuracy and the idealised ranking accuracy:
hand-computed values, then `evaluate()` on a dataset with each source of alpha."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import prefdata
from prefdata.train import EvalConfig, TrainConfig, evaluate, train
from prefdata.train.data import EncodeSpec, encode_pairs
from prefdata.train.eval import (
    idealised_ranking_accuracy,
    normalised_ranking_accuracy,
    ranking_accuracy,
    reward_accuracy,
    score_examples,
)
from prefdata.train.logps import load_causal_lm


def test_ranking_accuracies_by_hand():
    assert ranking_accuracy(np.array([-1.0, -5.0, -3.0]), np.array([-2.0, -4.0, -3.0])) == pytest.approx(1 / 3)  # tie = wrong
    chosen, rejected = np.array([-10.0, -4.0]), np.array([-6.0, -3.0])
    assert ranking_accuracy(chosen, rejected) == 0.0
    # per token: chosen -1, -2; rejected -2, -3 -> both right once lengths are taken out
    assert normalised_ranking_accuracy(chosen, rejected, np.array([10.0, 2.0]), np.array([3.0, 1.0])) == 1.0


def test_idealised_ranking_accuracy_by_hand():
    ref_c, ref_r = np.array([-13.0, -9.0, -20.1]), np.array([-10.0, -10.0, -20.0])  # ref log-ratio: -3, 1, -0.1
    # alpha 0.6, beta 0.1: + log(1.5)/0.1 = +4.05 -> all three positive
    assert idealised_ranking_accuracy(ref_c, ref_r, 0.6, 0.1) == 1.0
    # beta 1: + 0.405 -> -2.59, 1.41, 0.31 -> two of three
    assert idealised_ranking_accuracy(ref_c, ref_r, 0.6, 1.0) == pytest.approx(2 / 3)
    # alpha 1/2: the reference's own order
    assert idealised_ranking_accuracy(ref_c, ref_r, 0.5, 0.1) == pytest.approx(1 / 3)
    # per pair: unanimous (+inf), unanimous against (-inf), split
    assert idealised_ranking_accuracy(ref_c, ref_r, np.array([1.0, 0.0, 0.5]), 0.1) == pytest.approx(1 / 3)


def test_reward_accuracy_by_hand():
    acc, margin = reward_accuracy(np.array([-1.0, -2.0]), np.array([-3.0, -1.0]), np.array([-2.0, -2.0]),
                                  np.array([-2.0, -2.0]), beta=0.5)
    # rewards: chosen 0.5, 0; rejected -0.5, 0.5 -> margins 1.0, -0.5
    assert acc == 0.5 and margin == pytest.approx(0.25)


@pytest.fixture(scope="module")
def trained(hh_dataset, tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=run, max_steps=4, batch_size=4, lr=1e-2,
                      warmup_ratio=0.0), progress=False)
    return run / "final"


def test_evaluate_the_starting_model(hh_dataset, tiny_model_dir):
    metrics = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir),
                                  alpha=0.5))
    assert metrics["pairs"] == 12
    assert metrics["reward_accuracy"] == 0.0 and metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    # alpha = 1/2 leaves the reference's order, and the reference is the model itself
    assert metrics["idealised_ranking_accuracy"] == metrics["reference_ranking_accuracy"] == metrics["ranking_accuracy"]
    model, tokenizer, _ = load_causal_lm(str(tiny_model_dir), torch.device("cpu"))
    examples = encode_pairs(prefdata.load(hh_dataset), tokenizer, EncodeSpec()).examples
    scores = score_examples(model, examples, tokenizer.pad_token_id)
    assert metrics["ranking_accuracy"] == ranking_accuracy(scores["chosen_logps"], scores["rejected_logps"])


def test_evaluate_a_trained_checkpoint_with_alpha_from_the_flip_rate(hh_dataset, tiny_model_dir, trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hh_dataset, data)
    stats = json.loads((data / "stats.json").read_text())
    stats["estimates"] = {"flip_rate": {"epsilon": 0.2, "interval": [0.1, 0.3], "method": "injected"}}
    (data / "stats.json").write_text(json.dumps(stats))
    out = tmp_path / "metrics.json"
    metrics = evaluate(EvalConfig(dataset=data, model=str(trained), reference_model=str(tiny_model_dir), beta=0.1), output=out)
    assert json.loads(out.read_text()) == metrics
    assert metrics["reward_margin"] > 0 and metrics["reward_accuracy"] > 0.5  # trained on these pairs
    assert metrics["alpha_source"].startswith("1 - flip-rate epsilon from") and metrics["idealised_ranking_accuracy"] is not None
    # log(0.8/0.2)/0.1 = 13.9 nats of push: the idealised policy ranks nearly every pair right
    assert metrics["idealised_ranking_accuracy"] >= metrics["reference_ranking_accuracy"]
    assert math.isfinite(metrics["mean_chosen_logps"])


def test_no_alpha_means_a_null_with_its_reason(hh_dataset, tiny_model_dir):
    metrics = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir), limit=4))
    assert metrics["idealised_ranking_accuracy"] is None
    assert "no 'estimates.flip_rate'" in metrics["idealised_ranking_accuracy_missing"]
    assert metrics["pairs"] == 4


def test_holdout_split_matches_training(hh_dataset, tiny_model_dir):
    held = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir),
                               split="holdout", holdout=0.3))
    rest = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir),
                               split="train", holdout=0.3))
    assert held["pairs"] == 3 and rest["pairs"] == 9  # the same 3 rows the trainer holds out (test_loop)
    with pytest.raises(ValueError, match="split 'holdout' needs the holdout share"):
        EvalConfig(dataset=hh_dataset, split="holdout")


def test_evaluate_reports_the_length_normalised_ranking_accuracy(hh_dataset, tiny_model_dir):
    metrics = evaluate(EvalConfig(dataset=hh_dataset, model=str(tiny_model_dir), reference_model=str(tiny_model_dir),
                                  alpha=0.5, limit=8))
    model, tokenizer, _ = load_causal_lm(str(tiny_model_dir), torch.device("cpu"))
    examples = encode_pairs(prefdata.load(hh_dataset).select(range(8)), tokenizer, EncodeSpec()).examples
    scores = score_examples(model, examples, tokenizer.pad_token_id)
    expected = normalised_ranking_accuracy(scores["chosen_logps"], scores["rejected_logps"], scores["chosen_lengths"],
                                           scores["rejected_lengths"])
    assert metrics["ranking_accuracy_normalised"] == expected
    # per-token log-probs order these pairs differently from the sums, so the two metrics are not one number
    assert metrics["ranking_accuracy_normalised"] != metrics["ranking_accuracy"]


def test_alpha_column_wins_over_the_flip_rate(hh_dataset, tiny_model_dir, tmp_path):
    """A per-pair `--alpha-column` is used even when the dataset has a flip-rate estimate: alpha 1 (unanimous)
    counts a pair, alpha 0 never does, whatever the reference says, so 3 of 12 pairs at alpha 1 give 1/4."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(hh_dataset, data)
    shards = sorted((data / "data").glob("*.parquet"))
    seen = 0
    for shard in shards:
        table = pq.read_table(shard)
        agree = [1.0 if seen + i < 3 else 0.0 for i in range(table.num_rows)]
        seen += table.num_rows
        pq.write_table(table.append_column("agree", pa.array(agree, pa.float64())), shard)
    stats = json.loads((data / "stats.json").read_text())
    stats["estimates"] = {"flip_rate": {"epsilon": 0.2, "interval": [0.1, 0.3], "method": "injected"}}
    (data / "stats.json").write_text(json.dumps(stats))
    common = {"dataset": data, "model": str(tiny_model_dir), "reference_model": str(tiny_model_dir), "beta": 0.1}
    by_column = evaluate(EvalConfig(**common, alpha_column="agree"))
    assert by_column["pairs"] == 12 and by_column["alpha_source"] == "column agree"
    assert by_column["idealised_ranking_accuracy"] == 0.25
    by_flip_rate = evaluate(EvalConfig(**common))
    assert by_flip_rate["alpha_source"].startswith("1 - flip-rate epsilon from")
    assert by_flip_rate["idealised_ranking_accuracy"] != 0.25
    from prefdata.train import TrainError

    with pytest.raises(TrainError, match="no column 'agreement' \\(--alpha-column\\)"):
        evaluate(EvalConfig(**common, alpha_column="agreement"))


def test_eval_holdout_sees_the_rows_training_held_out(hh_dataset, tiny_model_dir, tmp_path, monkeypatch):
    """The same row ids, not just as many: training's holdout evaluation and `prefdata eval --split holdout`."""
    from typer.testing import CliRunner

    from prefdata.cli import app
    from prefdata.train import eval as eval_module

    scored: list[list[str]] = []
    real = eval_module.evaluate_examples
    monkeypatch.setattr(eval_module, "evaluate_examples",
                        lambda model, examples, *a, **k: scored.append([e.id for e in examples]) or real(model, examples, *a, **k))
    run = tmp_path / "run"
    train(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=run, max_steps=1, batch_size=4,
                      holdout=0.3, save_final=False), progress=False)
    assert len(scored) == 2 and scored[0] == scored[1]  # before and after training
    held = scored[0]
    trained_on = json.loads((run / "config.json").read_text())["counts"]["train"]["pairs"]
    assert len(held) == 3 and trained_on == 9
    for split in ("holdout", "train"):
        result = CliRunner().invoke(app, ["eval", str(hh_dataset), "--model", str(tiny_model_dir), "--reference-model",
                                          str(tiny_model_dir), "--alpha", "0.5", "--split", split, "--holdout", "0.3"])
        assert result.exit_code == 0, result.output
    assert sorted(scored[2]) == sorted(held)
    all_ids = prefdata.load(hh_dataset)["id"]
    assert sorted(scored[3]) == sorted(set(all_ids) - set(held)) and len(scored[3]) == 9
