"""Ranking accuracy, implicit-reward accuracy and the idealised ranking accuracy of a model.

Paper: Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings"
(arXiv 2405.19534).

* Ranking accuracy (summed): RA = mean_i 1[log pi(y+_i|x_i) > log pi(y-_i|x_i)], the model's own
  likelihoods, no reference.
* Length-normalised RA: the same on mean per-token log-probs, log pi(y|x) / |y|.
* Idealised RA: what a policy that optimises the DPO objective perfectly would reach. The optimum
  satisfies pi*(y+)/pi*(y-) = [ref(y+)/ref(y-)] * (alpha/(1-alpha))^(1/beta), with alpha the share of
  raters who prefer y+ (their Theorem 3.1), so
  idealised RA = mean_i 1[log ref(y+_i) - log ref(y-_i) + (1/beta) log(alpha_i/(1-alpha_i)) > 0].
  alpha = 1 (unanimous) gives +inf: the pair always counts; alpha = 1/2 leaves the reference's order.
* Reward accuracy: mean 1[r(y+) > r(y-)] with DPO's implicit reward r = beta (log pi - log ref) (as TRL logs it).

Ties (equal values) count as wrong in every accuracy.

Decision (where alpha comes from): `alpha` (a constant), else `alpha_column` (per pair), else
1 - epsilon from the dataset's flip-rate estimate (`prefdata.train.config`: with labels flipped at
rate epsilon, the expected share of raters agreeing with the label is 1 - epsilon); else the
idealised RA is null with the reason, never a guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from prefdata.schemas.formats import REF_CHOSEN, REF_REJECTED
from prefdata.train.config import EvalConfig, TrainError, read_flip_rate
from prefdata.train.data import EncodeSpec, encode_pairs, in_holdout, load_pairs
from prefdata.types import Precision, ReferenceSource

CITATION = """@article{chen2024preference,
  title={Preference Learning Algorithms Do Not Learn Preference Rankings},
  author={Chen, Angelica and Malladi, Sadhika and Zhang, Lily H. and Chen, Xinyi and Zhang, Qiuyi and Ranganath, Rajesh and Cho, Kyunghyun},
  journal={arXiv preprint arXiv:2405.19534},
  year={2024}
}"""


def ranking_accuracy(chosen_logps: np.ndarray, rejected_logps: np.ndarray) -> float:
    return float(np.mean(np.asarray(chosen_logps) > np.asarray(rejected_logps)))


def normalised_ranking_accuracy(chosen_logps: np.ndarray, rejected_logps: np.ndarray, chosen_lengths: np.ndarray,
                                rejected_lengths: np.ndarray) -> float:
    return ranking_accuracy(np.asarray(chosen_logps) / np.asarray(chosen_lengths),
                            np.asarray(rejected_logps) / np.asarray(rejected_lengths))


def idealised_ranking_accuracy(ref_chosen_logps: np.ndarray, ref_rejected_logps: np.ndarray, alpha: np.ndarray | float,
                               beta: float) -> float:
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), np.shape(ref_chosen_logps))
    with np.errstate(divide="ignore"):  # alpha = 1 -> log(alpha/0) = +inf, alpha = 0 -> -inf: both exact
        log_odds = np.log(alpha) - np.log1p(-alpha)
    ideal = np.asarray(ref_chosen_logps) - np.asarray(ref_rejected_logps) + log_odds / beta
    return float(np.mean(ideal > 0))


def reward_accuracy(chosen_logps: np.ndarray, rejected_logps: np.ndarray, ref_chosen_logps: np.ndarray,
                    ref_rejected_logps: np.ndarray, beta: float) -> tuple[float, float]:
    """(accuracy, mean margin) of DPO's implicit reward."""
    chosen_r = beta * (np.asarray(chosen_logps) - np.asarray(ref_chosen_logps))
    rejected_r = beta * (np.asarray(rejected_logps) - np.asarray(ref_rejected_logps))
    return float(np.mean(chosen_r > rejected_r)), float(np.mean(chosen_r - rejected_r))


def ranking_metrics(scores: dict[str, np.ndarray], *, beta: float, alpha: np.ndarray | float | None = None,
                    alpha_note: str | None = None) -> dict[str, Any]:
    """All metrics from per-pair arrays: chosen/rejected logps and lengths, and ref logps when known."""
    c, r = scores["chosen_logps"], scores["rejected_logps"]
    out: dict[str, Any] = {
        "pairs": int(len(c)),
        "ranking_accuracy": ranking_accuracy(c, r),
        "ranking_accuracy_normalised": normalised_ranking_accuracy(c, r, scores["chosen_lengths"], scores["rejected_lengths"]),
        "mean_chosen_logps": float(np.mean(c)), "mean_rejected_logps": float(np.mean(r)),
        "reward_accuracy": None, "reward_margin": None, "idealised_ranking_accuracy": None,
    }
    if scores.get("ref_chosen_logps") is not None:
        rc, rr = scores["ref_chosen_logps"], scores["ref_rejected_logps"]
        out["reward_accuracy"], out["reward_margin"] = reward_accuracy(c, r, rc, rr, beta)
        out["reference_ranking_accuracy"] = ranking_accuracy(rc, rr)
        if alpha is not None:
            out["idealised_ranking_accuracy"] = idealised_ranking_accuracy(rc, rr, alpha, beta)
    if out["idealised_ranking_accuracy"] is None:
        out["idealised_ranking_accuracy_missing"] = alpha_note or "no reference log-probs"
    elif alpha_note:
        out["alpha_source"] = alpha_note
    return out


def score_examples(model: Any, examples: list, pad_id: int, reference: Any = None, *, batch_size: int = 8,
                   precision: Precision = Precision.AUTO, device: Any = None) -> dict[str, np.ndarray]:
    """Policy (and reference) summed log-probs and response lengths of tokenised pairs, in order."""
    import torch

    from prefdata.train.data import collate
    from prefdata.train.logps import autocast, response_logps

    device = device or next(model.parameters()).device
    keys = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_lengths", "rejected_lengths")
    parts: dict[str, list] = {k: [] for k in keys}
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(precision, device):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            B = batch["n_pairs"]
            logps = response_logps(model, batch, rows=2 * B).double().cpu().numpy()
            parts["chosen_logps"].append(logps[:B])
            parts["rejected_logps"].append(logps[B:])
            parts["chosen_lengths"].append(batch["lengths"][:B].numpy())
            parts["rejected_lengths"].append(batch["lengths"][B : 2 * B].numpy())
            if reference is not None:
                ref_c, ref_r = reference(batch)
                parts["ref_chosen_logps"].append(ref_c.double().cpu().numpy())
                parts["ref_rejected_logps"].append(ref_r.double().cpu().numpy())
    model.train(was_training)
    return {k: (np.concatenate(v) if v else None) for k, v in parts.items()}


def evaluate_examples(model: Any, examples: list, pad_id: int, reference: Any = None, *, beta: float,
                      alpha: float | None = None, alpha_note: str | None = None, batch_size: int = 8,
                      precision: Precision = Precision.AUTO, device: Any = None) -> dict[str, Any]:
    scores = score_examples(model, examples, pad_id, reference, batch_size=batch_size, precision=precision, device=device)
    per_pair = [e.alpha for e in examples]
    if alpha is None and per_pair and all(a is not None for a in per_pair):
        alpha = np.asarray(per_pair)
    return ranking_metrics(scores, beta=beta, alpha=alpha, alpha_note=alpha_note if alpha is not None else
                           (alpha_note or "no alpha: pass --alpha or --alpha-column, or give the dataset a flip-rate estimate"))


def _alpha(config: EvalConfig) -> tuple[float | None, str | None]:
    if config.alpha is not None:
        return config.alpha, "config"
    if config.alpha_column is not None:
        return None, f"column {config.alpha_column}"
    try:
        flip, origin = read_flip_rate(config.dataset)
    except TrainError as exc:
        return None, f"no alpha ({exc})"
    return 1.0 - flip.epsilon, f"1 - flip-rate epsilon from {origin}"


def evaluate(config: EvalConfig, *, model: Any = None, tokenizer: Any = None, reference_model: Any = None,
             output: str | Path | None = None) -> dict[str, Any]:
    """Load the dataset and model(s), score every usable pair, return (and optionally write) the metrics."""
    from prefdata.train.logps import columns_reference, load_causal_lm, model_reference, pick_device
    from prefdata.train.packing import use_packed_attention

    device = pick_device(config.device)
    ds = load_pairs(config.dataset, config.limit)
    if config.split != "all":
        keep = [in_holdout(i, config.holdout) == (config.split == "holdout") for i in ds["id"]]
        ds = ds.select([i for i, k in enumerate(keep) if k])
    has_columns = REF_CHOSEN in ds.column_names and REF_REJECTED in ds.column_names
    if config.reference == ReferenceSource.COLUMNS and not has_columns:
        raise TrainError(f"{config.dataset}: reference 'columns' needs {REF_CHOSEN} and {REF_REJECTED}")
    use_columns = has_columns and config.reference != ReferenceSource.MODEL
    if config.alpha_column is not None and config.alpha_column not in ds.column_names:
        raise TrainError(f"{config.dataset}: no column '{config.alpha_column}' (--alpha-column)")
    if model is None:  # one it loads itself runs padding-free (the same numbers, less time)
        model, tokenizer, _ = load_causal_lm(config.model, device)
        use_packed_attention(model)
    if use_columns:
        reference = columns_reference
    else:
        if reference_model is None:
            same = config.reference_model == config.model
            reference_model = model if same else load_causal_lm(config.reference_model, device)[0]
            if not same:  # a model passed in is left as it is
                use_packed_attention(reference_model)
        reference = model_reference(reference_model.eval())
    spec = EncodeSpec(max_length=config.max_length, ref_columns=use_columns, alpha_column=config.alpha_column)
    encoded = encode_pairs(ds, tokenizer, spec, str(config.dataset))
    if not encoded.examples:
        raise TrainError(f"{config.dataset}: no usable pairs to evaluate ({dict(encoded.counts)})")
    alpha, alpha_note = _alpha(config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    metrics = evaluate_examples(model, encoded.examples, pad_id, reference, beta=config.beta, alpha=alpha,
                                alpha_note=alpha_note, batch_size=config.batch_size, precision=config.precision,
                                device=device)
    metrics.update({"split": config.split, "skipped": {k: v for k, v in encoded.counts.items()
                                                        if k not in ("pairs", "with_rationale", "with_edit_spans")},
                    "reference": "columns" if use_columns else (config.reference_model or config.model or "embedded")})
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(metrics, indent=2))
    return metrics
