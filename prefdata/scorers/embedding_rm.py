"""Embedding reward model: Bradley-Terry heads on frozen sentence embeddings, cross-fitted.

The offline, CPU-cheap reward model the voting filter and the flip-rate estimate use when a user
has no reward model (METHODS.md "Multi-RM voting strength", **Decision**). A frozen
sentence-transformers encoder (default: the embedded all-MiniLM-L6-v2; any hub id or local folder
loads by the same path) embeds the prompt x and each response y; a head r(x, y) = g(phi(x, y)) is
trained by prefdata with the Bradley-Terry likelihood (Bradley & Terry 1952; the RLHF reward-model
loss of Ouyang et al. 2022, arXiv 2203.02155):

    phi(x, y) = [e(y), e(x) * e(y)]            (e = unit-norm embedding; * elementwise)
    loss      = mean_i -log sigma(r(x_i, y+_i) - r(x_i, y-_i)) + weight_decay * |theta|^2

`g` is linear (`hidden = 0`) or a one-hidden-layer MLP. Full-batch AdamW, few fixed steps (early
stopping is the regulariser: 50 steps at lr 0.01 beat 300 steps on held-out HH pairs, 0.62 vs 0.58
single-head accuracy), seeded.

**Cross-fitting.** Member m assigns every pair a fold k_m(pair) = hash(seed, m, key) mod K, where
key is the pair's `prompt_id` (default; pairs that share a prompt share a fold, so a head never
saw a sibling pair's responses either) or its `id`. Head (m, k) trains on a bootstrap resample of
the pairs whose fold is not k, and member m scores every pair with head (m, k_m(pair)): no pair
is ever scored by a head that trained on it (tests check it on the recorded training ids). The
members differ in their fold split and bootstrap draw, so their disagreement (`strength_std`) is
meaningful. Pairs outside the training data are scored the same way (their fold is a hash, and
no head trained on them).

**The stage** (`type = "embedding_rm"`) appends its M members to the ensemble list columns
`chosen_scores`, `rejected_scores`, `member_margins` (after any members an earlier stage wrote;
null where a member has no score) and writes the aggregates `chosen_score`, `rejected_score`,
`margin` (means over all members, or its own with `aggregate = "own"`); member names, folds and
the out-of-fold accuracy (share of pairs whose mean member margin is > 0) go to stats.json
`estimates.embedding_rm`.

**Whole input, whatever the shards**: the stage is map -> fit -> apply (`WholeInputStage`).
`score` embeds each shard's prompts and responses (scratch vector columns); `fit` trains the M x K
heads once, on the (id, fold key, vectors) view of ALL shards (or on `train_path` when given), and
measures the out-of-fold accuracy over every pair; `apply` scores each shard's pairs out of fold
with the fitted heads (their weights are the fitted state, checkpointed and reused on resume).

**Decisions.**
- Prompt text is the last user turn (multi-turn HH context would fill MiniLM's 256-token window
  with the opening turns); a response is its assistant turns' contents joined by newlines.
- Each distinct text is embedded once per run: an in-memory cache maps text -> row of one
  embedding matrix; rows hold indices into it. Texts are never used to match rows to each other.
- A head with fewer than `min_train_pairs` training pairs is not trained; the pairs it would
  score get null member scores (error `too_few_training_pairs`), never a made-up value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefdata.engines.base import derive_seed
from prefdata.engines.config import expand_vars
from prefdata.pipeline.context import CALIBRATION_KEY, BuildContext
from prefdata.pipeline.stage import StageOutput, WholeInputStage
from prefdata.schemas.pair import put_column
from prefdata.types import Chat, Role, ScoreError, SourceKind

CITATION = """@article{bradley1952rank,
  title={Rank Analysis of Incomplete Block Designs: I. The Method of Paired Comparisons},
  author={Bradley, Ralph Allan and Terry, Milton E.},
  journal={Biometrika},
  volume={39},
  number={3/4},
  pages={324--345},
  year={1952}
}

@inproceedings{reimers2019sentencebert,
  title={Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author={Reimers, Nils and Gurevych, Iryna},
  booktitle={Proceedings of EMNLP-IJCNLP},
  year={2019},
  note={arXiv:1908.10084}
}"""


def prompt_text(prompt: Chat) -> str:
    """The text embedded for a prompt: its last user turn (see Decisions)."""
    users = [m["content"] for m in prompt if m["role"] == Role.USER.value]
    return users[-1] if users else "\n".join(m["content"] for m in prompt)


def response_text(messages: Chat) -> str:
    return "\n".join(m["content"] for m in messages)


class TextEmbedder:
    """A frozen sentence-transformers encoder with a per-run cache: each distinct text is encoded once."""

    def __init__(self, model: str | None = None, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        from prefdata.engines.embedded import resolve_model

        self.model_name = model or "embedded:all-minilm-l6-v2"
        self.path = resolve_model(self.model_name, kind="embedder")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = SentenceTransformer(self.path, device=device, trust_remote_code=False)
        self.batch_size = batch_size
        self._index: dict[str, int] = {}
        self._chunks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self.encoded = 0  # texts actually run through the encoder (cache misses)

    @property
    def dim(self) -> int:
        return int(self.encoder.get_sentence_embedding_dimension())

    def indices(self, texts: Sequence[str]) -> np.ndarray:
        """Row indices of `texts` in the cache matrix, encoding the new ones in one batched call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._index))
        if new:
            vectors = self.encoder.encode(new, batch_size=self.batch_size, convert_to_numpy=True,
                                          normalize_embeddings=True, show_progress_bar=False)
            start = len(self._index)
            for offset, text in enumerate(new):
                self._index[text] = start + offset
            self._chunks.append(vectors.astype(np.float32))
            self._matrix = None
            self.encoded += len(new)
        return np.fromiter((self._index[t] for t in texts), dtype=np.int64, count=len(texts))

    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim), np.float32)
            self._chunks = [self._matrix]
        return self._matrix

    def embed_pairs(self, ids: Sequence[str], keys: Sequence[str], prompts: Sequence[Chat],
                    chosen: Sequence[Chat], rejected: Sequence[Chat]) -> PairEmbeddings:
        p = self.indices([prompt_text(x) for x in prompts])
        c = self.indices([response_text(y) for y in chosen])
        r = self.indices([response_text(y) for y in rejected])
        m = self.matrix()
        return PairEmbeddings(list(ids), list(keys), m[p], m[c], m[r])


@dataclass
class PairEmbeddings:
    """Embeddings of n pairs, by position: ids[i] and keys[i] (the fold key) name row i."""

    ids: list[str]
    keys: list[str]
    prompt: np.ndarray  # (n, d)
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def features(prompt: np.ndarray, response: np.ndarray) -> torch.Tensor:
    """phi(x, y) = [e(y), e(x) * e(y)]: response content plus its agreement with the prompt."""
    return torch.from_numpy(np.concatenate([response, prompt * response], axis=1)).float()


class BTHead(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
        else:
            self.net = torch.nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def train_head(chosen: torch.Tensor, rejected: torch.Tensor, *, hidden: int, steps: int, lr: float,
               weight_decay: float, seed: int) -> BTHead:
    """Fit one head by the Bradley-Terry likelihood, full batch (features are small and few)."""
    generator = torch.Generator().manual_seed(seed)
    head = BTHead(chosen.shape[1], hidden)
    with torch.no_grad():  # seeded init, independent of the global torch RNG
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = -torch.nn.functional.logsigmoid(head(chosen) - head(rejected)).mean()
        loss.backward()
        optimiser.step()
    head.eval()
    return head


@dataclass
class CrossFitScores:
    """Per-member out-of-fold scores of n pairs (NaN where a member has no head for the pair)."""

    chosen: np.ndarray  # (n, M)
    rejected: np.ndarray  # (n, M)
    folds: np.ndarray  # (n, M): the fold k whose head (m, k) scored the pair

    @property
    def margins(self) -> np.ndarray:
        return self.chosen - self.rejected


@dataclass
class EmbeddingRewardModel:
    """M members x K folds of Bradley-Terry heads. `fit` trains; `cross_fit` scores pairs out of fold;
    `score` gives the mean over all heads for responses no head trained on."""

    members: int = 5
    folds: int = 5
    hidden: int = 0
    steps: int = 50
    lr: float = 0.01
    weight_decay: float = 1e-3
    bootstrap: bool = True
    min_train_pairs: int = 8
    seed: int = 0
    heads: dict[tuple[int, int], BTHead] = field(default_factory=dict)
    trained_on: dict[tuple[int, int], frozenset[str]] = field(default_factory=dict)  # head -> pair ids it saw

    def member_names(self, prefix: str = "embedding_rm") -> list[str]:
        return [f"{prefix}_{m}" for m in range(self.members)]

    def fold_of(self, member: int, key: str) -> int:
        return derive_seed(self.seed, "embedding_rm_fold", member, key) % self.folds

    def fit(self, train: PairEmbeddings) -> EmbeddingRewardModel:
        self.heads.clear()
        self.trained_on.clear()
        chosen = features(train.prompt, train.chosen)
        rejected = features(train.prompt, train.rejected)
        for m in range(self.members):
            fold = np.array([self.fold_of(m, k) for k in train.keys], dtype=np.int64)
            for k in range(self.folds):
                pool = np.flatnonzero(fold != k)
                if len(pool) < self.min_train_pairs:
                    continue
                seed = derive_seed(self.seed, "embedding_rm_head", m, k)
                if self.bootstrap:
                    pool = np.random.default_rng(seed).choice(pool, size=len(pool), replace=True)
                index = torch.from_numpy(pool)
                self.heads[(m, k)] = train_head(chosen[index], rejected[index], hidden=self.hidden, steps=self.steps,
                                                lr=self.lr, weight_decay=self.weight_decay, seed=seed)
                self.trained_on[(m, k)] = frozenset(train.ids[i] for i in pool)
        return self

    @torch.no_grad()
    def cross_fit(self, pairs: PairEmbeddings) -> CrossFitScores:
        n = len(pairs)
        out = CrossFitScores(np.full((n, self.members), np.nan), np.full((n, self.members), np.nan),
                             np.zeros((n, self.members), dtype=np.int64))
        chosen, rejected = features(pairs.prompt, pairs.chosen), features(pairs.prompt, pairs.rejected)
        for m in range(self.members):
            fold = np.array([self.fold_of(m, k) for k in pairs.keys], dtype=np.int64)
            out.folds[:, m] = fold
            for k in range(self.folds):
                rows = np.flatnonzero(fold == k)
                head = self.heads.get((m, k))
                if head is None or not len(rows):
                    continue
                index = torch.from_numpy(rows)
                out.chosen[rows, m] = head(chosen[index]).double().numpy()
                out.rejected[rows, m] = head(rejected[index]).double().numpy()
        return out

    @torch.no_grad()
    def score(self, prompt: np.ndarray, response: np.ndarray) -> np.ndarray:
        """Mean over every head: for responses of prompts outside the training data."""
        if not self.heads:
            raise RuntimeError("the embedding reward model is not fitted")
        x = features(prompt, response)
        return torch.stack([head(x) for head in self.heads.values()]).mean(0).double().numpy()

    def state(self) -> dict[str, Any]:
        """The heads' weights as JSON-able lists (the fitted state a build checkpoints; no pickle)."""
        return {f"{m},{k}": {name: value.tolist() for name, value in head.state_dict().items()}
                for (m, k), head in sorted(self.heads.items())}

    def load_state(self, state: dict[str, Any], dim: int) -> EmbeddingRewardModel:
        self.heads.clear()
        for name, weights in state.items():
            m, k = (int(x) for x in name.split(","))
            head = BTHead(dim, self.hidden)
            head.load_state_dict({key: torch.tensor(value, dtype=torch.float32) for key, value in weights.items()})
            head.eval()
            self.heads[(m, k)] = head
        return self

    def identity(self) -> dict[str, Any]:
        return {"members": self.members, "folds": self.folds, "hidden": self.hidden, "steps": self.steps,
                "lr": self.lr, "weight_decay": self.weight_decay, "bootstrap": self.bootstrap, "seed": self.seed}


# -- the build stage -------------------------------------------------------------------------------
class EmbeddingRMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["embedding_rm"] = "embedding_rm"
    model: str | None = Field(None, description="Sentence-transformers model: hub id or folder; empty = embedded all-MiniLM-L6-v2")
    members: int = Field(5, ge=1, le=64, description="Ensemble members M (each its own fold split and bootstrap)")
    folds: int = Field(5, ge=2, le=50, description="Cross-fitting folds K per member")
    fold_by: Literal["prompt_id", "id"] = Field("prompt_id", description="Fold key: pairs of one prompt share a fold, or each pair its own")
    hidden: int = Field(0, ge=0, description="Hidden units of the head (0 = linear)")
    steps: int = Field(50, ge=1, description="Full-batch AdamW steps per head")
    lr: float = Field(0.01, gt=0, description="Learning rate of the heads")
    weight_decay: float = Field(1e-3, ge=0, description="AdamW weight decay of the heads")
    bootstrap: bool = Field(True, description="Train each head on a bootstrap resample of its folds")
    min_train_pairs: int = Field(8, ge=1, description="A head needs this many training pairs, else its pairs get null scores")
    train_path: Path | None = Field(None, description="Train on this pair file (cross-fitting across all of it, whatever the shards) "
                                                      "instead of on each shard")
    train_kind: SourceKind = Field(SourceKind.PAIRS, description="Kind of train_path: pairs or hh")
    train_limit: int | None = Field(None, ge=1, description="Use only the first N pairs of train_path")
    batch_size: int = Field(64, ge=1, description="Texts per encoder batch")
    aggregate: Literal["all", "own", "none"] = Field(
        "all", description="chosen_score/rejected_score/margin = mean over all members (all), these members (own), or untouched")
    prefix: str = Field("embedding_rm", description="Member names: <prefix>_0 ... <prefix>_{M-1}")

    @field_validator("train_path", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_vars(value) if isinstance(value, str) else value


LIST_COLUMNS = ("chosen_scores", "rejected_scores", "member_margins")


def _nan_to_none(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in matrix]


def _mean(rows: list[list[float | None]]) -> list[float | None]:
    out = []
    for row in rows:
        values = [v for v in row or [] if v is not None]
        out.append(float(np.mean(values)) if values else None)
    return out


VECTORS = ("_erm_prompt", "_erm_chosen", "_erm_rejected")  # scratch: unit embeddings of one pair
PRIOR_MEMBERS = "_erm_prior_members"  # scratch: members already in a row's margin lists (where ours start)


def _vector_column(matrix: np.ndarray) -> pa.Array:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    dim = matrix.shape[1] if matrix.ndim == 2 else 1
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()), dim)


def _matrix(column: pa.ChunkedArray, rows: int) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)


class EmbeddingRMStage(WholeInputStage):
    """Cross-fitted Bradley-Terry heads on frozen sentence embeddings, as ensemble members of every pair."""

    name: ClassVar[str] = "embedding_rm"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt_id", "prompt", "chosen", "rejected")
    adds: ClassVar[tuple[str, ...]] = LIST_COLUMNS + ("chosen_score", "rejected_score", "margin")
    scratch: ClassVar[tuple[str, ...]] = VECTORS + (PRIOR_MEMBERS,)
    config: EmbeddingRMConfig

    def __init__(self, config: EmbeddingRMConfig | None = None):
        super().__init__(config or EmbeddingRMConfig())
        self.embedder: TextEmbedder | None = None
        self.fit_columns = tuple(dict.fromkeys(("id", self.config.fold_by) + VECTORS + (PRIOR_MEMBERS,)))
        self._fitted: tuple[int, EmbeddingRewardModel] | None = None  # (id of the state, model built from it)

    def new_model(self, seed: int) -> EmbeddingRewardModel:
        c = self.config
        return EmbeddingRewardModel(members=c.members, folds=c.folds, hidden=c.hidden, steps=c.steps, lr=c.lr,
                                    weight_decay=c.weight_decay, bootstrap=c.bootstrap,
                                    min_train_pairs=c.min_train_pairs, seed=seed)

    def embed(self, table: pa.Table) -> PairEmbeddings:
        cols = table.select(["id", self.config.fold_by, "prompt", "chosen", "rejected"]).to_pydict()
        return self.embedder.embed_pairs(cols["id"], cols[self.config.fold_by], cols["prompt"], cols["chosen"],
                                         cols["rejected"])

    def setup(self, ctx: BuildContext) -> None:
        if self.embedder is None:
            self.embedder = TextEmbedder(self.config.model, self.config.batch_size)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "embedder": self.embedder.path if self.embedder else None}

    @staticmethod
    def _pairs(table: pa.Table, fold_by: str) -> PairEmbeddings:
        n = table.num_rows
        prompt, chosen, rejected = (_matrix(table.column(name), n) for name in VECTORS)
        return PairEmbeddings(table.column("id").to_pylist(), table.column(fold_by).to_pylist(), prompt, chosen, rejected)

    def score(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        """Embed the shard's prompts and responses (each distinct text once per process)."""
        self.setup(ctx)
        pairs = self.embed(table)
        for name, matrix in zip(VECTORS, (pairs.prompt, pairs.chosen, pairs.rejected)):
            table = put_column(table, name, _vector_column(matrix))
        prior = (pc.fill_null(pc.list_value_length(table.column("member_margins")), 0)
                 if "member_margins" in table.column_names else pa.array([0] * table.num_rows))
        return StageOutput(put_column(table, PRIOR_MEMBERS, prior.cast(pa.int32())))

    def fit(self, view: pa.Table, ctx: BuildContext) -> dict[str, Any]:
        """Train the heads once: on `train_path`, or on every pair of the input (out of fold)."""
        c = self.config
        pairs = self._pairs(view, c.fold_by)
        if c.train_path is not None:
            from prefdata.schemas.readers import read_pairs

            self.setup(ctx)
            train = read_pairs(c.train_path, kind=c.train_kind, limit=c.train_limit).table
            embedded = self.embed(train)
            model, fit_pairs = self.new_model(ctx.seed).fit(embedded), train.num_rows
            # Out-of-fold accuracy on train_path: which training pairs the vote (mean member margin > 0)
            # gets right, never scored by a head that saw them; the noise stage's `calibrated` reads it.
            train_margins = model.cross_fit(embedded).margins if len(embedded) and model.heads else np.zeros((0, c.members))
            train_scored = ~np.isnan(train_margins).all(axis=1) if len(train_margins) else np.zeros(0, dtype=bool)
            correct = (np.nanmean(train_margins[train_scored], axis=1) > 0) if train_scored.any() else np.zeros(0, bool)
            calibration = {"correct": correct.tolist(), "member_count": c.members,
                           "source": f"embedding_rm out-of-fold on {c.train_path}"}
            widths = set(view.column(PRIOR_MEMBERS).to_pylist()) or {0}
            if len(widths) == 1:  # where our members sit in every row's lists (else the noise stage takes the last M)
                start = widths.pop()
                calibration["members"] = [start, start + c.members]
        else:
            model, fit_pairs = self.new_model(ctx.seed).fit(pairs), len(pairs)
            calibration = None
        margins = model.cross_fit(pairs).margins if len(pairs) and model.heads else np.zeros((0, c.members))
        scored = ~np.isnan(margins).all(axis=1) if len(margins) else np.zeros(0, dtype=bool)
        mean_margin = np.nanmean(margins[scored], axis=1) if scored.any() else np.zeros(0)
        estimate = {"members": model.member_names(c.prefix), "folds": model.folds, "fit_pairs": fit_pairs,
                    "out_of_fold_accuracy": round(float(np.mean(mean_margin > 0)), 6) if len(mean_margin) else None}
        if calibration is not None and calibration["correct"]:
            estimate["train_out_of_fold_accuracy"] = round(float(np.mean(calibration["correct"])), 6)
            estimate["train_scored_pairs"] = len(calibration["correct"])
        dim = 2 * pairs.prompt.shape[1] if len(pairs) else 0
        return {"estimate": estimate, "dim": dim, "heads": model.state(), "calibration": calibration}

    def fit_estimates(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return {"embedding_rm": fitted["estimate"]}

    def describe(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return {"heads": sorted(fitted["heads"]), "feature_dim": fitted["dim"]}

    def publish(self, fitted: dict[str, Any]) -> dict[str, Any]:
        """For the noise stage's `calibrated`: the members' out-of-fold accuracy on train_path, and where
        they sit in the margin lists."""
        return {CALIBRATION_KEY: fitted["calibration"]} if fitted.get("calibration") else {}

    def model_from(self, fitted: dict[str, Any], ctx: BuildContext) -> EmbeddingRewardModel:
        if self._fitted is None or self._fitted[0] != id(fitted):
            self._fitted = (id(fitted), self.new_model(ctx.seed).load_state(fitted["heads"], fitted["dim"]))
        return self._fitted[1]

    def apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> StageOutput:
        counters: Counter = Counter()
        pairs = self._pairs(table, self.config.fold_by)
        model = self.model_from(fitted, ctx)
        scores = model.cross_fit(pairs) if len(pairs) else CrossFitScores(
            np.zeros((0, model.members)), np.zeros((0, model.members)), np.zeros((0, model.members), dtype=np.int64))
        missing = int(np.isnan(scores.chosen).sum())
        if missing:
            counters[f"embedding_rm_null_{ScoreError.TOO_FEW_TRAINING_PAIRS.value}"] += missing
        new = {"chosen_scores": _nan_to_none(scores.chosen), "rejected_scores": _nan_to_none(scores.rejected),
               "member_margins": _nan_to_none(scores.margins)}
        for name in LIST_COLUMNS:
            previous = table.column(name).to_pylist() if name in table.column_names else [[] for _ in range(len(pairs))]
            merged = [(old or []) + own for old, own in zip(previous, new[name])]
            table = put_column(table, name, pa.array(merged, type=pa.list_(pa.float64())))
        if self.config.aggregate != "none":
            source = new if self.config.aggregate == "own" else {n: table.column(n).to_pylist() for n in LIST_COLUMNS}
            for name, values in (("chosen_score", _mean(source["chosen_scores"])),
                                 ("rejected_score", _mean(source["rejected_scores"])),
                                 ("margin", _mean(source["member_margins"]))):
                table = put_column(table, name, pa.array(values, type=pa.float64()))
        return StageOutput(table, [], counters)
