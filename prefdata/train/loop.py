"""The training loop: read a prefdata dataset, tokenise it, and run AdamW on a preference loss.

Read top to bottom: `train()` is `prepare_run()` (the data, the models, the reference, the
optimizer) then `fit()`, which loops over optimizer steps (`optimizer_step()`); each step sets the
learning rate from the pure `lr_at()` schedule, accumulates `grad_accum` micro-batches through
`batch_loss()` (one concatenated forward of chosen, rejected and rationale rows; the reference
from the dataset's columns or a frozen model), clips the gradient and steps. Everything a step measured goes to `metrics.jsonl`.

Run folder (`output_dir`):

    config.json          the resolved config (epsilon's value and where it came from, the reference used)
    metrics.jsonl        one line per logged step: loss, rewards, reward margin and accuracy, lr, grad norm
    rejects.parquet      pairs set aside (too long, null reference or margin, bad edit spans), with row and reason
    eval.json            ranking metrics on the holdout before and after training (when holdout > 0)
    checkpoint-N/, final/ safetensors state dict + HF config + tokenizer (LoRA: adapter; final/ is merged)
    summary.json         steps, pairs, seconds, final metrics

Decisions: no resume (optimizer state is not saved; checkpoints are for evaluation and export);
the reference model, when one is needed, is a frozen copy of the starting policy (or the base
model with LoRA adapters disabled), so `reference_model` is only needed to name another one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefdata.schemas.errors import rejects_table
from prefdata.schemas.formats import RATIONALE, REF_CHOSEN, REF_MODEL, REF_REJECTED
from prefdata.schemas.writers import write_bytes_atomic, write_parquet_atomic
from prefdata.train.config import TrainConfig, TrainError, read_flip_rate
from prefdata.train.data import (
    EncodeResult,
    EncodeSpec,
    PairExample,
    collate,
    encode_pairs,
    in_holdout,
    load_pairs,
)
from prefdata.train.lean_mlp import use_lean_mlp
from prefdata.train.logps import (
    DEFAULT_CHUNK,
    Reference,
    adapter_disabled_reference,
    autocast,
    base_model,
    columns_reference,
    load_causal_lm,
    model_reference,
    pick_device,
    response_logps,
)
from prefdata.train.losses import nll_term, preference_loss, rationale_term
from prefdata.train.packing import use_packed_attention
from prefdata.train.schedule import lr_at, warmup_steps
from prefdata.types import LossType, ReferenceSource

DEFAULT_GAMMA = 0.1  # RDPO's default rationale weight (Just et al. 2024)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval_before: dict[str, Any] | None = None
    eval_after: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)


# --- one batch -------------------------------------------------------------------------------


def batch_loss(policy: Any, batch: dict[str, Any], reference: Reference, *, loss: LossType, beta: float,
               epsilon: float | None = None, margin_scale: float = 1.0, gamma: float = 0.0,
               nll_weight: float = 0.0, chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean loss over the batch's pairs and its metrics (detached 0-d tensors: the caller reads them
    on the host only when it logs). One forward of the policy over all rows."""
    B = batch["n_pairs"]
    logps = response_logps(policy, batch, chunk_size=chunk_size)  # [2B + rationale rows]
    chosen, rejected = logps[:B], logps[B : 2 * B]
    ref_chosen, ref_rejected = reference(batch)
    ref_chosen, ref_rejected = ref_chosen.to(chosen), ref_rejected.to(chosen)
    lengths = batch["lengths"].to(chosen.device)
    margin = batch["margin"].to(chosen) * margin_scale if "margin" in batch else None
    out = preference_loss(loss, chosen, rejected, ref_chosen, ref_rejected, beta=beta, epsilon=epsilon, margin=margin,
                          chosen_lengths=lengths[:B], rejected_lengths=lengths[B : 2 * B])
    per_pair = out.losses
    metrics: dict[str, Tensor] = {"pref_loss": per_pair.detach().mean()}
    if gamma > 0 and len(batch["rationale_pairs"]):
        term = torch.zeros_like(per_pair)
        term[batch["rationale_pairs"].to(term.device)] = rationale_term(logps[2 * B :], gamma=gamma)
        per_pair = per_pair + term
        metrics["rationale_loss"] = term.detach().mean()
    if nll_weight > 0:
        nll = nll_term(chosen, lengths[:B])
        per_pair = per_pair + nll_weight * nll
        metrics["nll"] = nll.detach().mean()
    chosen_r, rejected_r = out.chosen_rewards.detach(), out.rejected_rewards.detach()
    metrics.update({
        "rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
        "rewards/margin": (chosen_r - rejected_r).mean(),
        "rewards/accuracy": (chosen_r > rejected_r).float().mean(),
        "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean(),
    })
    loss_value = per_pair.mean()
    metrics["loss"] = loss_value.detach()
    return loss_value, metrics


def host_metrics(step_metrics: list[dict[str, Tensor]]) -> dict[str, float]:
    """Mean of each metric over a step's micro-batches, read to the host in one transfer."""
    keys = list(step_metrics[0])
    stacked = torch.stack([torch.stack([m[k].float() for k in keys]) for m in step_metrics]).mean(0)
    return dict(zip(keys, stacked.cpu().tolist()))


# --- data order -------------------------------------------------------------------------------


def batches(examples: Sequence[PairExample], batch_size: int, pad_id: int, seed: int) -> Iterator[dict[str, Any]]:
    """Endless micro-batches: each epoch a fresh permutation (seeded by seed and epoch); the last
    short batch of an epoch is kept."""
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        epoch += 1


# --- setup helpers ----------------------------------------------------------------------------


def resolve_epsilon(config: TrainConfig) -> tuple[float | None, str | None]:
    if config.epsilon == "auto":
        flip, origin = read_flip_rate(config.dataset)
        return flip.epsilon, f"{origin} ({flip.method}, interval {list(flip.interval)})"
    return config.epsilon, "config" if config.epsilon is not None else None


def resolve_reference(config: TrainConfig, columns: Sequence[str]) -> ReferenceSource:
    has_columns = REF_CHOSEN in columns and REF_REJECTED in columns
    if config.reference == ReferenceSource.COLUMNS and not has_columns:
        raise TrainError(f"{config.dataset}: reference 'columns' needs {REF_CHOSEN} and {REF_REJECTED} "
                         "(add the reference_logps stage to the build)")
    if config.reference == ReferenceSource.AUTO:
        use_columns = has_columns and config.edit_span_weight == 1.0  # span weights need token-level reference
        return ReferenceSource.COLUMNS if use_columns else ReferenceSource.MODEL
    return config.reference


def check_reference_model(dataset: Any, config: TrainConfig) -> None:
    """The dataset's ref columns must come from the training reference (names compared as given and
    as resolved folders, so 'embedded:...' and its cache folder match)."""
    from prefdata.engines.embedded import SMOLLM2, resolve_model

    if REF_MODEL not in dataset.column_names:
        return
    wanted = config.reference_model if config.reference_model is not None else config.model
    names = {wanted or SMOLLM2, resolve_model(wanted)}
    for name in sorted(set(dataset.unique(REF_MODEL)) - {None}):
        if name not in names and resolve_model(name) not in names:
            raise TrainError(f"{config.dataset}: column {REF_MODEL}: reference log-probs were computed with {name!r}, "
                             f"but the training reference is {wanted or SMOLLM2!r}; use --reference model or rebuild")


def save_model(model: Any, tokenizer: Any, folder: Path, config: TrainConfig, step: int, merge: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if merge and hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(folder))  # safetensors state dict + config.json (or the LoRA adapter)
    tokenizer.save_pretrained(str(folder))
    record = {"step": step, "train_config": json.loads(config.model_dump_json())}
    write_bytes_atomic(json.dumps(record, indent=2).encode(), folder / "prefdata_train.json")


def wrap_lora(model: Any, settings: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


# --- the loop ---------------------------------------------------------------------------------


def train(config: TrainConfig, *, model: Any = None, tokenizer: Any = None, dataset: Any = None,
          progress: bool = True) -> TrainResult:
    """Train `config.model` (or the given `model`/`tokenizer`) on `config.dataset` (or `dataset`)."""
    return fit(prepare_run(config, model=model, tokenizer=tokenizer, dataset=dataset), progress=progress)


@dataclass
class PreparedRun:
    """A run ready to fit (`prepare_run`): the tokenised data, the policy, the reference, the
    optimizer and the schedule; config.json and rejects.parquet are already in `run_dir`."""

    config: TrainConfig
    run_dir: Path
    device: Any  # torch.device
    model: Any
    tokenizer: Any
    reference: Reference
    params: list[Any]
    optimizer: Any
    train_set: EncodeResult
    eval_set: EncodeResult | None
    rejects: list[Any]
    total: int
    warmup: int
    pad_id: int
    loss_args: dict[str, Any]
    started: float


def prepare_run(config: TrainConfig, *, model: Any = None, tokenizer: Any = None, dataset: Any = None) -> PreparedRun:
    """Everything before the first step: the run folder, the data (which columns the loss needs,
    then tokenised; rows that cannot be used go to rejects), the models, the reference, the optimizer."""
    started = time.perf_counter()
    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"{run_dir}: output path exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    ds = dataset if dataset is not None else load_pairs(config.dataset, config.limit)
    epsilon, epsilon_source = resolve_epsilon(config)
    reference_source = resolve_reference(config, ds.column_names)
    gamma = resolve_rationale_weight(config, ds.column_names)
    if config.loss == LossType.MARGIN and config.margin_column not in ds.column_names:
        raise TrainError(f"{config.dataset}: loss 'margin' needs the column '{config.margin_column}' (set --margin-column)")
    if model is None:
        if reference_source == ReferenceSource.COLUMNS:
            check_reference_model(ds, config)
        model, tokenizer, model_path = load_causal_lm(config.model, device)
    else:  # an in-memory model: the caller vouches for any precomputed reference columns
        if tokenizer is None:
            raise TrainError("train(model=...) needs the model's tokenizer too")
        model, model_path = model.to(device), getattr(model, "name_or_path", "in-memory")
    train_set, eval_set, rejects = encode_run_data(config, ds, tokenizer, reference_source, gamma, run_dir)
    model, reference = policy_and_reference(config, model, reference_source, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pairs_per_step = config.batch_size * config.grad_accum
    total = config.max_steps or max(1, math.ceil(config.epochs * len(train_set.examples) / pairs_per_step))
    warmup = warmup_steps(total, config.warmup_ratio)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss_args = {"loss": config.loss, "beta": config.beta, "epsilon": epsilon, "margin_scale": config.margin_scale,
                 "gamma": gamma, "nll_weight": config.nll_weight, "chunk_size": config.logps_chunk}
    resolved = {**json.loads(config.model_dump_json()), "epsilon_value": epsilon, "epsilon_source": epsilon_source,
                "reference_source": reference_source.value, "rationale_weight_value": gamma, "model_path": model_path,
                "total_steps": total, "warmup_steps": warmup, "device": str(device),
                "counts": {"train": dict(train_set.counts), "holdout": dict(eval_set.counts) if eval_set else {}}}
    write_bytes_atomic(json.dumps(resolved, indent=2).encode(), run_dir / "config.json")
    return PreparedRun(config, run_dir, device, model, tokenizer, reference, params, optimizer, train_set, eval_set,
                       rejects, total, warmup, pad_id, loss_args, started)


def resolve_rationale_weight(config: TrainConfig, columns: Sequence[str]) -> float:
    """RDPO's gamma: the config's, else the default when the dataset has rationales, else 0."""
    gamma = config.rationale_weight if config.rationale_weight is not None else (
        DEFAULT_GAMMA if RATIONALE in columns else 0.0)
    if gamma > 0 and RATIONALE not in columns:
        raise TrainError(f"{config.dataset}: rationale_weight {gamma} needs a '{RATIONALE}' column")
    return gamma


def encode_run_data(config: TrainConfig, ds: Any, tokenizer: Any, reference_source: ReferenceSource, gamma: float,
                    run_dir: Path) -> tuple[EncodeResult, EncodeResult | None, list[Any]]:
    """The training and holdout pairs as token ids; the rows set aside go to rejects.parquet."""
    spec = EncodeSpec(max_length=config.max_length, ref_columns=reference_source == ReferenceSource.COLUMNS,
                      margin_column=config.margin_column if config.loss == LossType.MARGIN else None,
                      rationale=gamma > 0, edit_span_weight=config.edit_span_weight)
    held = [in_holdout(i, config.holdout) for i in ds["id"]]
    train_set = encode_pairs((r for r, h in zip(ds, held) if not h), tokenizer, spec, str(config.dataset))
    eval_set = encode_pairs((r for r, h in zip(ds, held) if h), tokenizer, spec, str(config.dataset)) if any(held) else None
    rejects = train_set.rejects + (eval_set.rejects if eval_set else [])
    write_parquet_atomic(rejects_table(rejects), run_dir / "rejects.parquet")
    if not train_set.examples:
        raise TrainError(f"{config.dataset}: no usable training pairs ({dict(train_set.counts)}; see {run_dir / 'rejects.parquet'})")
    return train_set, eval_set, rejects


def policy_and_reference(config: TrainConfig, model: Any, reference_source: ReferenceSource,
                         device: Any) -> tuple[Any, Reference]:
    """The policy ready to train (LoRA-wrapped if asked, no dropout) and its reference: the
    dataset's columns, a frozen copy, another model, or the base under LoRA adapters."""
    if reference_source == ReferenceSource.MODEL and config.reference_model is not None:
        ref_model, _, _ = load_causal_lm(config.reference_model, device)
    elif reference_source == ReferenceSource.MODEL and config.lora is None:
        ref_model = copy.deepcopy(model)
    else:
        ref_model = None
    if config.lora is not None:
        model = wrap_lora(model, config.lora)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
        reference = model_reference(ref_model, config.logps_chunk)
    elif reference_source == ReferenceSource.MODEL:
        reference = adapter_disabled_reference(model, config.logps_chunk)
    else:
        reference = columns_reference
    if config.gradient_checkpointing:
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lean_mlp:  # after LoRA: a wrapped projection keeps its own forward
        use_lean_mlp(base_model(model))
    if config.padding_free:  # sdpa models; others keep padded batches
        for packable in (model, ref_model):
            if packable is not None:
                use_packed_attention(packable)
    model.train()
    for module in model.modules():  # DPO trains without dropout (as TRL's disable_dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, reference


def fit(run: PreparedRun, progress: bool = True) -> TrainResult:
    """The optimizer steps of a prepared run, with the holdout evaluated before and after; writes
    metrics.jsonl, checkpoints, eval.json, final/ and summary.json."""
    from prefdata.train.eval import evaluate_examples

    config, model, run_dir, total = run.config, run.model, run.run_dir, run.total

    def evaluate_holdout() -> dict[str, Any] | None:
        if not run.eval_set or not run.eval_set.examples:
            return None
        return evaluate_examples(model, run.eval_set.examples, run.pad_id, run.reference, beta=config.beta,
                                 batch_size=config.batch_size, precision=config.precision, device=run.device)

    result = TrainResult(run_dir=run_dir, steps=total, counts=dict(run.train_set.counts))
    result.eval_before = evaluate_holdout()
    stream = batches(run.train_set.examples, config.batch_size, run.pad_id, config.seed)
    log = (run_dir / "metrics.jsonl").open("w", encoding="utf-8")
    bar = _progress(progress)
    task = bar.add_task("train", total=total, loss=float("nan"), margin=float("nan"))
    pairs_seen = 0
    with bar, log:
        for step in range(total):
            step_started = time.perf_counter()
            lr, step_metrics, grad_norm, pairs = optimizer_step(run, stream, step)
            pairs_seen += pairs
            seconds = round(time.perf_counter() - step_started, 4)
            if (step + 1) % config.log_every == 0 or step + 1 == total:  # the only host sync of a step
                record = host_metrics(step_metrics)
                record.update({"step": step + 1, "lr": lr, "grad_norm": float(grad_norm), "pairs": pairs_seen,
                               "seconds": seconds})
                log.write(json.dumps(record) + "\n")
                log.flush()
                result.metrics.append(record)
                bar.update(task, loss=record["loss"], margin=record["rewards/margin"])
            bar.update(task, advance=1)
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < total:
                save_model(model, run.tokenizer, run_dir / f"checkpoint-{step + 1}", config, step + 1)

    model.eval()
    result.eval_after = evaluate_holdout()
    if result.eval_before is not None:
        write_bytes_atomic(json.dumps({"before": result.eval_before, "after": result.eval_after}, indent=2).encode(),
                           run_dir / "eval.json")
    if config.save_final:
        save_model(model, run.tokenizer, run_dir / "final", config, total, merge=config.lora is not None)
    summary = {"steps": total, "pairs_seen": pairs_seen, "train_pairs": len(run.train_set.examples),
               "holdout_pairs": len(run.eval_set.examples) if run.eval_set else 0, "rejects": len(run.rejects),
               "seconds": round(time.perf_counter() - run.started, 3), "final": result.metrics[-1] if result.metrics else None}
    write_bytes_atomic(json.dumps(summary, indent=2).encode(), run_dir / "summary.json")
    return result


def optimizer_step(run: PreparedRun, stream: Iterator[dict[str, Any]],
                   step: int) -> tuple[float, list[dict[str, Tensor]], Tensor, int]:
    """One optimizer step: `grad_accum` micro-batches, clip, step. Returns the learning rate, the
    micro-batches' metrics (device tensors), the gradient norm and the pairs seen."""
    config = run.config
    lr = lr_at(step, peak=config.lr, total=run.total, warmup=run.warmup, min_ratio=config.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    step_metrics: list[dict[str, Tensor]] = []
    pairs = 0
    for _ in range(config.grad_accum):
        batch = next(stream)
        with autocast(config.precision, run.device):
            loss, metrics = batch_loss(run.model, batch, run.reference, **run.loss_args)
        (loss / config.grad_accum).backward()  # average over micro-batches
        step_metrics.append(metrics)
        pairs += batch["n_pairs"]
    max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, max_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr, step_metrics, grad_norm, pairs


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f} margin {task.fields[margin]:+.4f}"), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)
