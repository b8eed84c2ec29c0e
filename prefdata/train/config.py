"""Typed configs of the trainer and the evaluator, and the `--epsilon auto` contract.

**The flip-rate contract** (`epsilon = "auto"`). A dataset folder states its estimated label-flip
rate in `stats.json` under

    "estimates": {"flip_rate": {"epsilon": 0.12, "interval": [0.08, 0.17], "method": "moments"}}

`epsilon` is the point estimate in [0, 0.5), `interval` a [lo, hi] range with lo <= epsilon <= hi,
and `method` says how it was estimated (the filters write it; see METHODS.md "Label-noise flip
rate"). When `stats.json` lacks that key, the dataset card (`README.md` in the folder) is read
instead: its YAML front matter may carry the same object under `prefdata: estimates: flip_rate:`
(a dataset downloaded from the Hub has a card but may have no stats.json). `stats.json` wins when
both exist, because the card is written from it. Without either, `auto` fails with one line that
names the files and the key. An explicit float is always used as given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefdata.schemas.errors import PrefdataError
from prefdata.types import LossType, Precision, ReferenceSource

STATS_FILE, CARD_FILE = "stats.json", "README.md"
FLIP_RATE_KEY = "estimates.flip_rate"


class TrainError(PrefdataError):
    """A training or evaluation setting that cannot work (the CLI prints it in one line)."""


class FlipRate(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    epsilon: float = Field(ge=0.0, lt=0.5, description="Estimated share of pairs whose label is flipped")
    interval: tuple[float, float] = Field(description="[lo, hi] range of the estimate")
    method: str = Field(description="How the estimate was made")

    @model_validator(mode="after")
    def _inside(self) -> FlipRate:
        lo, hi = self.interval
        if not lo <= self.epsilon <= hi:
            raise ValueError(f"epsilon {self.epsilon} is outside its interval [{lo}, {hi}]")
        return self


def _front_matter(card: Path) -> dict[str, Any]:
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data = yaml.safe_load(text[3:end])
    return data if isinstance(data, dict) else {}


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def read_flip_rate(dataset_dir: str | Path) -> tuple[FlipRate, str]:
    """The dataset's flip-rate estimate and the file it came from (see the module docstring)."""
    folder = Path(dataset_dir)
    if not folder.is_dir():
        folder = folder.parent  # a Parquet file: look next to it
    stats, card = folder / STATS_FILE, folder / CARD_FILE
    found, origin = None, None
    if stats.is_file():
        try:
            found = _dig(json.loads(stats.read_text(encoding="utf-8")), "estimates", "flip_rate")
        except json.JSONDecodeError as exc:
            raise TrainError(f"{stats}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        origin = str(stats)
    if found is None and card.is_file():
        found = _dig(_front_matter(card), "prefdata", "estimates", "flip_rate")
        origin = f"{card} (front matter prefdata.{FLIP_RATE_KEY})"
    if found is None:
        raise TrainError(f"{stats}: no '{FLIP_RATE_KEY}' (nor in {card} front matter); "
                         "run the flip-rate filter or pass --epsilon FLOAT")
    try:
        return FlipRate.model_validate(found), str(origin)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        loc = ".".join(str(p) for p in first["loc"])
        raise TrainError(f"{origin}: {FLIP_RATE_KEY}{'.' + loc if loc else ''}: {first['msg']}") from None


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get adapters")


class TrainConfig(BaseModel):
    """Everything a training run needs; `prefdata train` builds one from its options."""

    model_config = ConfigDict(extra="forbid")

    dataset: Path = Field(description="A prefdata dataset folder, a Parquet file, or a `datasets` save_to_disk folder")
    output_dir: Path = Field(Path("out/train"), description="Run folder: config, metrics.jsonl, checkpoints, rejects")
    model: str | None = Field(None, description="Policy to train: hub id or folder; empty = the embedded SmolLM2-135M-Instruct")
    reference_model: str | None = Field(None, description="Reference model; empty = the policy's starting weights")
    reference: ReferenceSource = Field(ReferenceSource.AUTO, description="auto: the dataset's ref_*_logps columns when present, else a frozen reference model")
    loss: LossType = Field(LossType.SIGMOID, description="Preference loss (prefdata.train.losses.LOSSES)")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta (tau for IPO)")
    epsilon: float | Literal["auto"] | None = Field(None, description="Flip rate for cdpo/robust; 'auto' reads the dataset's estimate")
    margin_column: str = Field("margin", description="Column with the per-pair margin for loss 'margin' (e.g. strength_mean)")
    margin_scale: float = Field(1.0, description="The margin used is margin_scale * column value")
    rationale_weight: float | None = Field(None, ge=0, description="RDPO gamma; empty = 0.1 when the dataset has a 'rationale' column, else off")
    nll_weight: float = Field(0.0, ge=0, description="Weight lambda of the per-token NLL on chosen (RISE; 0 = off)")
    edit_span_weight: float = Field(1.0, gt=0, description="Weight of response tokens inside metadata.edit_spans (RISE; 1 = off)")
    lr: float = Field(1e-6, gt=0, description="Peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of steps with linear warmup")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine decays to min_lr_ratio * lr")
    batch_size: int = Field(4, ge=1, description="Pairs per micro-batch")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (empty = no clipping)")
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides epochs)")
    max_length: int = Field(1024, ge=8, description="Longest prompt+response in tokens; longer pairs are skipped, never truncated")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs of the dataset")
    holdout: float = Field(0.0, ge=0, lt=1, description="Share of pairs (by a hash of the row id) held out and evaluated before and after")
    precision: Precision = Field(Precision.AUTO, description="auto (bf16 autocast on a capable GPU, else fp32), fp32, bf16")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters (peft) instead of all weights")
    logps_chunk: int = Field(512, ge=0, description="Response positions per LM-head chunk in the log-prob pass (0 = full logits)")
    gradient_checkpointing: bool = Field(False, description="Recompute the decoder's activations in the backward pass (less memory, ~1.3x time)")
    lean_mlp: bool = Field(True, description="SwiGLU MLPs keep their input, gate and up projections and recompute the rest in the backward pass (same gradients, less memory)")
    padding_free: bool = Field(True, description="Run the decoder on each batch's real tokens only, packed into one row with attention per row (same log-probs; no compute or memory spent on padding; sdpa models)")
    seed: int = Field(0, description="Seed of the shuffle and of any random init")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N optimizer steps")
    save_every: int | None = Field(None, ge=1, description="Save a checkpoint every N optimizer steps (the final one always)")
    save_final: bool = Field(True, description="Save the final model under output_dir/final")

    @field_validator("epsilon", mode="before")
    @classmethod
    def _epsilon(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"epsilon must be a number or 'auto', got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        smoothed = self.loss in (LossType.CDPO, LossType.ROBUST)
        if smoothed and self.epsilon is None:
            raise ValueError(f"loss '{self.loss.value}' needs epsilon (a flip rate, or 'auto' to read the dataset's estimate)")
        if not smoothed and self.epsilon is not None:
            raise ValueError(f"epsilon applies to the cdpo and robust losses only, not '{self.loss.value}'")
        if isinstance(self.epsilon, float) and not 0 <= self.epsilon < 0.5:
            raise ValueError(f"epsilon must be in [0, 0.5), got {self.epsilon}")
        if self.edit_span_weight != 1.0 and self.reference == ReferenceSource.COLUMNS:
            raise ValueError("edit_span_weight needs token-level reference log-probs: use reference 'model' or 'auto'")
        return self


class EvalConfig(BaseModel):
    """Ranking accuracy (summed and length-normalised), implicit-reward accuracy and the idealised ranking
    accuracy of a model on a preference dataset."""

    model_config = ConfigDict(extra="forbid")

    dataset: Path = Field(description="A prefdata dataset folder, a Parquet file, or a `datasets` folder")
    model: str | None = Field(None, description="Model to evaluate: hub id, folder or run checkpoint; empty = embedded SmolLM2")
    reference_model: str | None = Field(None, description="Reference for implicit rewards; empty = the dataset's ref columns, else the embedded SmolLM2")
    reference: ReferenceSource = Field(ReferenceSource.AUTO, description="auto: the dataset's ref_*_logps columns when present, else the reference model")
    beta: float = Field(0.1, gt=0, description="beta of the implicit reward and of the idealised ranking accuracy")
    alpha: float | None = Field(None, gt=0, le=1, description="Share of raters preferring chosen, for the idealised RA (constant)")
    alpha_column: str | None = Field(None, description="Column with the per-pair share of raters preferring chosen")
    split: Literal["all", "holdout", "train"] = Field("all", description="Rows to evaluate: all, or one side of the holdout split")
    holdout: float = Field(0.0, ge=0, lt=1, description="The holdout share used at training (with split=holdout/train)")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs")
    batch_size: int = Field(8, ge=1, description="Pairs per forward pass")
    max_length: int = Field(1024, ge=8, description="Longest prompt+response; longer pairs are skipped and counted")
    precision: Precision = Field(Precision.AUTO, description="auto, fp32, bf16")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _split(self) -> EvalConfig:
        if self.split != "all" and self.holdout == 0:
            raise ValueError(f"split '{self.split}' needs the holdout share used at training (holdout > 0)")
        if self.alpha is not None and self.alpha_column is not None:
            raise ValueError("give alpha or alpha_column, not both")
        return self
