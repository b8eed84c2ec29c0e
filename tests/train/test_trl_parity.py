"""prefdata's trainer against TRL 1.16's DPOTrainer on the same model, data and log-probs:
the same token ids for every pair, and the same loss for sigmoid, cDPO, robust, IPO and hinge.

TRL computes its losses inside `DPOTrainer._compute_loss` from a model forward, so both sides run
the same tiny random Llama on the same rows; the reference log-probs are fed to both as
precomputed columns (TRL: `precompute_ref_log_probs=True`, then our values in the batch), chosen
so that beta * Delta spans both signs."""

from __future__ import annotations

import pytest
import torch

import prefdata
from prefdata.train.data import EncodeSpec, collate, encode_pairs
from prefdata.train.logps import columns_reference
from prefdata.train.loop import batch_loss
from prefdata.types import LossType

from .conftest import make_tiny_llama

trl = pytest.importorskip("trl")
BETA = 0.1


def _trl_trainer(model, dataset, tokenizer, tmp_path, **config):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=12, use_cpu=True, bf16=False,
                     report_to=[], save_strategy="no", precompute_ref_log_probs=True, beta=BETA, **config)
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


@pytest.fixture(scope="module")
def setup(hh_dataset, smol_tokenizer):
    dataset = prefdata.load(hh_dataset)
    model = make_tiny_llama(smol_tokenizer, seed=3)
    encoded = encode_pairs(dataset, smol_tokenizer, EncodeSpec(max_length=1024))
    assert len(encoded.examples) == len(dataset) == 12
    # Reference log-probs = the policy's own, shifted per side so that Delta takes both signs.
    with torch.no_grad():
        from prefdata.train.logps import response_logps

        batch = collate(encoded.examples, smol_tokenizer.pad_token_id)
        logps = response_logps(model, batch)
    shifts = torch.tensor([(-1.0) ** i * (2.0 + i) for i in range(12)])  # beta * Delta = -0.15 * shift
    for i, example in enumerate(encoded.examples):
        example.ref_chosen_logps = float(logps[i] + shifts[i])
        example.ref_rejected_logps = float(logps[12 + i] - 0.5 * shifts[i])
    return dataset, model, encoded.examples


def _trl_inputs(trainer, examples):
    rows = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids,
             "ref_chosen_logps": e.ref_chosen_logps, "ref_rejected_logps": e.ref_rejected_logps} for e in examples]
    return trainer.data_collator(rows)


def test_tokenisation_matches_trl(setup, smol_tokenizer, tmp_path):
    dataset, model, examples = setup
    trainer = _trl_trainer(model, dataset, smol_tokenizer, tmp_path)
    trl_rows = trainer.train_dataset
    assert len(trl_rows) == len(examples)
    for ours, theirs in zip(examples, trl_rows):
        assert ours.prompt_ids == theirs["prompt_ids"]
        assert ours.chosen_ids == theirs["chosen_ids"]
        assert ours.rejected_ids == theirs["rejected_ids"]
    # and the responses end with the template's end-of-turn token (no extra EOS for conversational rows)
    assert examples[0].chosen_ids[-2] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")


CASES = [
    (LossType.SIGMOID, {"loss_type": ["sigmoid"]}, {}),
    (LossType.ROBUST, {"loss_type": ["robust"], "label_smoothing": 0.2}, {"epsilon": 0.2}),
    (LossType.IPO, {"loss_type": ["ipo"]}, {}),
    (LossType.HINGE, {"loss_type": ["hinge"]}, {}),
]


@pytest.mark.parametrize(("loss", "trl_config", "ours"), CASES, ids=[c[0].value for c in CASES])
def test_loss_matches_trl(setup, smol_tokenizer, tmp_path, loss, trl_config, ours):
    dataset, model, examples = setup
    trainer = _trl_trainer(model, dataset, smol_tokenizer, tmp_path, **trl_config)
    for chunk in (examples,):  # one right-padded batch of all 12 pairs
        with torch.no_grad():
            theirs = trainer.compute_loss(trainer.model, _trl_inputs(trainer, chunk))
            mine, metrics = batch_loss(model, collate(chunk, smol_tokenizer.pad_token_id), columns_reference,
                                       loss=loss, beta=BETA, **ours)
        assert mine.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-5)
        assert float(metrics["rewards/margin"]) == pytest.approx(trainer._metrics["train"]["rewards/margins"][-1], abs=1e-5)
        assert float(metrics["rewards/accuracy"]) == pytest.approx(trainer._metrics["train"]["rewards/accuracies"][-1])
    assert 0 < float(metrics["rewards/accuracy"]) < 1  # the reference shifts give both signs of Delta


def test_cdpo_matches_trl_aot_on_single_pairs_and_trl_sigmoid_ignores_smoothing(setup, smol_tokenizer, tmp_path):
    """TRL >= 0.29 applies no label smoothing to 'sigmoid'; in TRL 1.16 cDPO's formula is 'aot' with
    label_smoothing, on one-pair batches (AOT sorts log-ratios across the batch; one pair: no reordering)."""
    dataset, model, examples = setup
    eps = 0.25
    aot = _trl_trainer(model, dataset, smol_tokenizer, tmp_path, loss_type=["aot"], label_smoothing=eps)
    smoothed_sigmoid = _trl_trainer(model, dataset, smol_tokenizer, tmp_path, loss_type=["sigmoid"], label_smoothing=eps)
    pad = smol_tokenizer.pad_token_id
    for example in examples[::2]:
        with torch.no_grad():
            theirs = aot.compute_loss(aot.model, _trl_inputs(aot, [example]))
            mine, _ = batch_loss(model, collate([example], pad), columns_reference, loss=LossType.CDPO, beta=BETA, epsilon=eps)
            assert mine.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-5)
            plain = smoothed_sigmoid.compute_loss(smoothed_sigmoid.model, _trl_inputs(smoothed_sigmoid, [example]))
            ours_plain, _ = batch_loss(model, collate([example], pad), columns_reference, loss=LossType.SIGMOID, beta=BETA)
            assert plain.item() == pytest.approx(ours_plain.item(), rel=1e-5, abs=1e-5)
            assert abs(plain.item() - mine.item()) > 1e-3  # smoothing changes the value: TRL's sigmoid has none
