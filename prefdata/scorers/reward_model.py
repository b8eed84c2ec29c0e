"""Reward-model scorer: any `AutoModelForSequenceClassification` reward model, batched.

Paper: Ouyang et al. 2022, "Training language models to follow instructions with human
feedback" (arXiv 2203.02155): a reward model r(x, y) trained on human comparisons with the
Bradley-Terry loss -log sigma(r(x, y+) - r(x, y-)); its scalar output is the score. Works with
hub ids or local folders, e.g. Skywork-Reward-Llama-3.1-8B or a model trained by TRL's
`RewardTrainer` (on a GPU for 7B+ models).

Each (prompt, response) is rendered with the reward model's own chat template as one finished
conversation (prompt turns + one assistant turn, no generation prompt), tokenised once, and
scored in batches sorted by length. The score is logit `label_index` of the model's head at the
last non-padding token (the model's own pooling, as in training).

Decisions: batches are padded on `padding_side` with explicit position ids (a padded row sees
the positions it would see alone) and the model's `pad_token_id` set from the tokenizer (eos
when it has no pad token), so batched scores equal unbatched ones for either side; an input
longer than `max_length` is null (`truncated`), never scored on a cut; `trust_remote_code` is
off unless the recipe turns it on (ArmoRM-style custom heads need it); a model without a chat
template is an error, not a silently different prompt format.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.embedded import resolve_model
from prefdata.scorers.base import ScoreBatch, Scorer, ScoreResult
from prefdata.types import ScoreError

if TYPE_CHECKING:
    from prefdata.pipeline.context import BuildContext

CITATION = """@inproceedings{ouyang2022training,
  title={Training language models to follow instructions with human feedback},
  author={Ouyang, Long and Wu, Jeff and Jiang, Xu and Almeida, Diogo and Wainwright, Carroll and Mishkin, Pamela and Zhang, Chong and Agarwal, Sandhini and Slama, Katarina and Ray, Alex and others},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022},
  note={arXiv:2203.02155}
}"""


class RewardModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reward_model"] = "reward_model"
    model: str = Field(description="Hub id or local folder of an AutoModelForSequenceClassification reward model")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="Run model code from the hub; off unless you trust the repository")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("float32", description="Weights dtype (bfloat16 on GPUs)")
    device: str = Field("auto", description="torch device; auto = cuda if available, else cpu")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass")
    max_length: int = Field(4096, ge=8, description="Longer inputs get a null score (truncated), never a cut one")
    label_index: int = Field(0, ge=0, description="Which logit of the head is the reward (0 for single-output RMs)")
    padding_side: Literal["right", "left"] = Field("right", description="Side batches are padded on (scores do not depend on it)")


class RewardModelScorer(Scorer):
    name: ClassVar[str] = "reward_model"
    citation: ClassVar[str | None] = CITATION

    def __init__(self, config: RewardModelConfig, model: Any = None, tokenizer: Any = None):
        self.config = config
        self.model, self.tokenizer = model, tokenizer  # loaded in setup (building a stage must stay cheap)

    def load(self) -> None:
        """Load through the ordinary `from_pretrained` path (hub id or folder)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        cfg = self.config
        path = resolve_model(cfg.model)
        common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(path, **common)
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **common)
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()

    def setup(self, ctx: BuildContext) -> None:
        if self.model is None:
            self.load()

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def encode(self, prompt: list[dict[str, str]], response: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"reward model {self.config.model}: its tokenizer has no chat template")
        text = self.tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, batch: ScoreBatch) -> ScoreResult:
        if self.model is None:
            self.load()
        n = len(batch)
        values: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        todo: list[tuple[int, list[int]]] = []
        for i, (prompt, response) in enumerate(zip(batch.prompts, batch.responses)):
            if not response.strip():
                errors[i] = ScoreError.EMPTY_RESPONSE.value
                continue
            ids = self.encode(list(prompt), response)
            if len(ids) > self.config.max_length:
                errors[i] = ScoreError.TRUNCATED.value
                continue
            todo.append((i, ids))
        todo.sort(key=lambda item: -len(item[1]))  # little padding per batch; results go back by index
        size = self.config.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            for (i, _), value in zip(chunk, self.forward([ids for _, ids in chunk])):
                values[i] = value
        return ScoreResult(values, errors)

    def forward(self, sequences: list[list[int]]) -> list[float]:
        """The reward of each token sequence (one padded batch)."""
        import torch

        self.model.config.pad_token_id = self.pad_id  # the head pools at the last non-pad token
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if self.config.padding_side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq)
            mask[row, span] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in inspect.signature(self.model.forward).parameters:
            inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
        return [float(v) for v in logits[:, self.config.label_index].float().cpu()]

    def identity(self) -> dict[str, Any]:
        return {"scorer": self.name, **self.config.model_dump()}
