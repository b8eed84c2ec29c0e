"""`prefdata train` and `prefdata eval` through Typer's CliRunner: a tiny dataset, a tiny local model,
one-line errors; and (realdata) a dataset that `prefdata build` made from ../shared/data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prefdata.cli import app


def _train(args):
    return CliRunner().invoke(app, ["train", *args])


def test_train_then_eval(hh_dataset, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    result = _train([str(hh_dataset), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "2", "-b", "4",
                     "--lr", "1e-2", "--holdout", "0.3", "--loss", "ipo", "-q"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and "holdout before: ranking accuracy" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == "ipo" and config["lr"] == 1e-2 and config["holdout"] == 0.3
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["eval", str(hh_dataset), "--model", str(run / "final"), "--reference-model",
                                      str(tiny_model_dir), "--alpha", "0.7", "--split", "holdout", "--holdout", "0.3",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["pairs"] == 3 and metrics["split"] == "holdout" and metrics["alpha_source"] == "config"
    assert metrics["ranking_accuracy"] == json.loads(result.stdout)["ranking_accuracy"]
    assert metrics["reward_margin"] != 0


@pytest.mark.parametrize(("args", "message"), [
    (["--loss", "robust", "--epsilon", "auto"], "stats.json: no 'estimates.flip_rate'"),
    (["--loss", "sigmoid", "--epsilon", "0.1"], "epsilon applies to the cdpo and robust losses only"),
    (["--loss", "robust"], "loss 'robust' needs epsilon"),
    (["--loss", "bogus"], "loss: Input should be 'sigmoid', 'cdpo', 'robust', 'ipo', 'hinge' or 'margin'"),
    (["--reference", "columns"], "reference 'columns' needs ref_chosen_logps and ref_rejected_logps"),
])
def test_train_errors_are_one_line_with_exit_code_2(hh_dataset, tiny_model_dir, tmp_path, args, message):
    result = _train([str(hh_dataset), "--model", str(tiny_model_dir), "-o", str(tmp_path / "r"), "--max-steps", "1", "-q", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ") and "Traceback" not in result.output


@pytest.mark.realdata
def test_build_train_eval_on_shared_hh(shared_data, tiny_model_dir, tmp_path):
    recipe = tmp_path / "hh.toml"
    recipe.write_text(f'name = "hh"\n[source]\npath = "{shared_data / "hh_rlhf_harmless_test_1312.jsonl"}"\nkind = "hh"\n')
    built = tmp_path / "hh"
    result = CliRunner().invoke(app, ["build", str(recipe), "-o", str(built), "--limit", "24", "-q"])
    assert result.exit_code == 0, result.output
    result = _train([str(built), "--model", str(tiny_model_dir), "-o", str(tmp_path / "run"), "--max-steps", "2", "-b", "4",
                     "--lr", "1e-2", "--max-length", "512", "-q"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # long red-team transcripts are skipped (counted, in rejects.parquet), never truncated
    assert config["counts"]["train"]["pairs"] + config["counts"]["train"].get("sequence_too_long", 0) == 24
    result = CliRunner().invoke(app, ["eval", str(built), "--model", str(tmp_path / "run" / "final"), "--reference-model",
                                      str(tiny_model_dir), "--max-length", "512", "--limit", "8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["pairs"] + sum(metrics["skipped"].values()) == 8


def test_epochs_sets_the_optimizer_steps(hh_dataset, tiny_model_dir, tmp_path):
    """--epochs 1 with batch 4 on the 12 pairs: 3 optimizer steps, each pair seen once; 2.5 epochs: ceil(30/4) = 8."""
    from prefdata.train import TrainConfig
    from prefdata.train.loop import prepare_run

    run = tmp_path / "run"
    result = _train([str(hh_dataset), "--model", str(tiny_model_dir), "-o", str(run), "--epochs", "1", "-b", "4",
                     "--lr", "1e-3", "-q"])
    assert result.exit_code == 0, result.output
    assert "trained 3 steps" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["pairs_seen"] == summary["train_pairs"] == 12
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    longer = prepare_run(TrainConfig(dataset=hh_dataset, model=str(tiny_model_dir), output_dir=tmp_path / "r2",
                                     epochs=2.5, batch_size=4))
    assert longer.total == 8
