"""Deduplication and decontamination of prompts: exact, near-duplicate and benchmark overlap.

Three checks, in this order, each dropping whole prompts (a reject per row, with a reason):

1. **Contamination** (`contaminated`): the prompt shares at least `min_shared_ngrams` word
   n-grams (n = `ngram`, default 13 as in GPT-3's decontamination, Brown et al. 2020, arXiv
   2005.14165, Appendix C) with an item of a benchmark file (e.g. GSM8K test). The detail names
   the benchmark file and row.
2. **Exact duplicates** (`exact_duplicate`): same normalised text (NFKC, case-folded, every run
   of non-alphanumeric characters a single space, per message with its role), compared by hash.
3. **Near duplicates** (`near_duplicate`): cosine similarity >= `near_threshold` between
   MiniLM sentence embeddings (all-MiniLM-L6-v2, Reimers & Gurevych 2019, arXiv 1908.10084;
   SemDeDup, Abbas et al. 2023, arXiv 2303.09540, dedups by embedding cosine the same way).

Reads `id`, `prompt` (and `prompt_id` when present); adds nothing. Works on prompt tables
(before generation) and on pair tables.

Decisions:
* The unit is a prompt: rows that share a `prompt_id` (several pairs of one prompt) are never
  duplicates of each other; a duplicate prompt's rows are all dropped. Without `prompt_id`
  every row is its own prompt.
* The first occurrence (input order) is kept; each reject's detail names the id of the row kept
  (`duplicate of id ...`), and, for near duplicates, the cosine.
* Greedy in input order: a prompt is a near duplicate when it is close to an earlier *kept*
  prompt, so chains (a~b, b~c, a!~c) keep a and c.
* Embedded text is the prompt's messages as "role: content" lines; MiniLM reads at most 256
  word pieces, and the tokenizer truncates from the left, so long conversations are compared
  by their latest turns (what the answer responds to).
* Benchmark items shorter than `ngram` words are matched whole (their full word sequence must
  occur in the prompt). The benchmark text field is `benchmark_field`, or the first of
  question, prompt, problem, input, text present in the row.
* Duplicates and quantiles need every row at once: by default the stage refuses an input split
  into several shards (set `[output] shard_size` >= the input rows); `per_shard = true` dedups
  within each shard only. Contamination is per row and needs no global view.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from prefdata.engines.embedded import DEFAULT_EMBEDDER, resolve_model
from prefdata.pipeline.context import BuildContext
from prefdata.pipeline.stage import Stage, StageOutput
from prefdata.schemas.errors import InputError, Reject
from prefdata.types import RejectReason

CITATION = """@inproceedings{reimers2019sentence,
  title={Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author={Reimers, Nils and Gurevych, Iryna},
  booktitle={EMNLP},
  year={2019},
  note={arXiv:1908.10084}
}
@article{abbas2023semdedup,
  title={SemDeDup: Data-efficient learning at web-scale through semantic deduplication},
  author={Abbas, Amro and Tirumala, Kushal and Simig, D{\\'a}niel and Ganguli, Surya and Morcos, Ari S.},
  journal={arXiv preprint arXiv:2303.09540},
  year={2023}
}
@inproceedings{brown2020language,
  title={Language Models are Few-Shot Learners},
  author={Brown, Tom B. and others},
  booktitle={NeurIPS},
  year={2020},
  note={arXiv:2005.14165}
}"""

BENCHMARK_FIELDS = ("question", "prompt", "problem", "input", "text")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, runs of non-alphanumerics as one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Hash of the normalised prompt (role and text of each message)."""
    joined = "\x1e".join(f"{m['role']}\x1f{normalise(m['content'])}" for m in messages)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class BenchmarkIndex:
    """Word n-grams of a benchmark file's items -> the first item (file, row) that has each."""

    def __init__(self, items: Iterable[tuple[str, str]], n: int):
        self.n = n
        self.owner: dict[tuple[str, ...], str] = {}
        self.lengths: set[int] = set()  # n, plus the lengths of items shorter than n (matched whole)
        self.items = 0
        for where, text in items:
            words = normalise(text).split()
            if not words:
                continue
            size = min(n, len(words))
            self.lengths.add(size)
            for gram in ngrams(words, size):
                self.owner.setdefault(gram, where)
            self.items += 1

    @classmethod
    def from_files(cls, paths: Sequence[str], n: int, text_field: str | None) -> BenchmarkIndex:
        return cls((item for path in paths for item in _benchmark_items(Path(path), text_field)), n)

    def matches(self, text: str) -> Counter:
        """Benchmark item -> number of its n-grams found in `text`."""
        words = normalise(text).split()
        found: Counter = Counter()
        for size in self.lengths:
            for gram in ngrams(words, size):
                if gram in self.owner:
                    found[self.owner[gram]] += 1
        return found


def _benchmark_items(path: Path, text_field: str | None) -> Iterable[tuple[str, str]]:
    if not path.is_file():
        raise InputError(str(path), "benchmark file not found")
    with path.open(encoding="utf-8") as handle:
        for row, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(str(path), f"invalid JSON: {exc}", row=row) from None
            fields = [text_field] if text_field else [f for f in BENCHMARK_FIELDS if f in record]
            if not fields or not isinstance(record.get(fields[0]), str):
                wanted = text_field or " or ".join(BENCHMARK_FIELDS)
                raise InputError(str(path), f"no string field {wanted}", row=row, field=text_field)
            yield f"{path.name} row {row}", record[fields[0]]


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dedup"] = "dedup"
    exact: bool = Field(True, description="Drop prompts whose normalised text equals an earlier prompt's")
    near_threshold: float | None = Field(0.95, gt=0, le=1, description="Drop prompts whose embedding cosine with an earlier kept prompt is at least this; empty = off")
    embedder: str = Field(DEFAULT_EMBEDDER, description="sentence-transformers model: hub id, local folder or 'embedded:all-minilm-l6-v2'")
    embed_batch_size: int = Field(64, ge=1, description="Prompts per embedding batch")
    benchmarks: list[str] = Field(default_factory=list, description="JSONL benchmark files whose items must not appear in prompts")
    benchmark_field: str | None = Field(None, description="Text field of the benchmark rows; empty = question/prompt/problem/input/text")
    ngram: int = Field(13, ge=1, description="Word n-gram length for contamination")
    min_shared_ngrams: int = Field(1, ge=1, description="A prompt sharing at least this many n-grams with one benchmark item is contaminated")
    per_shard: bool = Field(False, description="Dedup within each shard instead of requiring the whole input in one shard")


class DedupStage(Stage):
    """Drops contaminated, exactly duplicated and near-duplicated prompts (see the module docstring)."""

    name: ClassVar[str] = "dedup"
    citation: ClassVar[str | None] = CITATION
    reads: ClassVar[tuple[str, ...]] = ("id", "prompt")
    config: DedupConfig

    def __init__(self, config: DedupConfig | None = None):
        super().__init__(config or DedupConfig())
        self.embedder: Any = None
        self.benchmark: BenchmarkIndex | None = None

    def setup(self, ctx: BuildContext) -> None:
        c = self.config
        if (c.exact or c.near_threshold is not None) and not c.per_shard:
            ctx.check_whole_input(self.name, "deduplication")
        if c.benchmarks:
            self.benchmark = BenchmarkIndex.from_files(c.benchmarks, c.ngram, c.benchmark_field)
        if c.near_threshold is not None and self.embedder is None:
            self.embedder = load_embedder(c.embedder)

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        c = self.config
        if c.benchmarks and self.benchmark is None:  # process without setup (a stage run by hand)
            self.benchmark = BenchmarkIndex.from_files(c.benchmarks, c.ngram, c.benchmark_field)
        if c.near_threshold is not None and self.embedder is None:
            self.embedder = load_embedder(c.embedder)
        ids = table.column("id").to_pylist()
        groups = table.column("prompt_id").to_pylist() if "prompt_id" in table.column_names else ids
        first: dict[Any, int] = {}  # group -> its first row (the row whose prompt represents the group)
        for row, group in enumerate(groups):
            first.setdefault(group, row)
        heads = list(first.values())
        prompts = table.column("prompt").take(heads).to_pylist()
        verdicts: dict[int, tuple[RejectReason, str]] = {}  # head row -> why its group is dropped
        counters: Counter = Counter(dedup_prompts=len(heads))
        if self.benchmark is not None:
            for head, prompt in zip(heads, prompts):
                hits = self.benchmark.matches(prompt_text(prompt))
                where, count = max(hits.items(), key=lambda kv: kv[1], default=(None, 0))
                if count >= c.min_shared_ngrams:
                    verdicts[head] = (RejectReason.CONTAMINATED, f"shares {count} {self.benchmark.n}-gram(s) with {where}")
        if c.exact:
            seen: dict[str, int] = {}
            for head, prompt in zip(heads, prompts):
                if head in verdicts:
                    continue
                key = prompt_key(prompt)
                if key in seen:
                    verdicts[head] = (RejectReason.EXACT_DUPLICATE, f"duplicate of id {ids[seen[key]]}")
                else:
                    seen[key] = head
        if c.near_threshold is not None:
            alive = [(h, p) for h, p in zip(heads, prompts) if h not in verdicts]
            if alive:
                vectors = embed(self.embedder, [prompt_text(p) for _, p in alive], c.embed_batch_size)
                for position, (kept, cosine) in near_duplicates(vectors, c.near_threshold).items():
                    verdicts[alive[position][0]] = (RejectReason.NEAR_DUPLICATE,
                                                    f"duplicate of id {ids[alive[kept][0]]} (cosine {cosine:.4f})")
        dropped_groups = {groups[head]: why for head, why in verdicts.items()}
        drop_rows = [row for row, group in enumerate(groups) if group in dropped_groups]
        rejects = []
        if drop_rows:
            for row, record in zip(drop_rows, table.take(drop_rows).to_pylist()):
                reason, detail = dropped_groups[groups[row]]
                rejects.append(Reject(stage=self.name, reason=reason, detail=detail, row_id=record["id"], field="prompt",
                                      payload=json.dumps(record, ensure_ascii=False, default=str)))
        keep = np.ones(table.num_rows, dtype=bool)
        keep[drop_rows] = False
        return StageOutput(table.filter(pa.array(keep)), rejects, counters)


def load_embedder(name: str) -> Any:
    """A SentenceTransformer from a hub id, a local folder or an embedded name (no remote code)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(name, kind="embedder"), trust_remote_code=False)
    model.tokenizer.truncation_side = "left"  # keep the latest turns of long conversations
    return model


def embed(model: Any, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Unit-length float32 embeddings [len(texts), dim]."""
    return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)


def near_duplicates(vectors: np.ndarray, threshold: float, block: int = 1024) -> dict[int, tuple[int, float]]:
    """Greedy in order: position -> (earlier kept position, cosine) for each vector whose cosine with
    an earlier kept vector is >= threshold (the most similar such kept vector is named)."""
    kept: list[int] = []
    duplicates: dict[int, tuple[int, float]] = {}
    for start in range(0, len(vectors), block):
        chunk = vectors[start : start + block]
        before = chunk @ vectors[kept].T if kept else np.zeros((len(chunk), 0), dtype=np.float32)
        within = chunk @ chunk.T
        kept_in_chunk: list[int] = []
        for i in range(len(chunk)):
            candidates = np.concatenate([before[i], within[i, kept_in_chunk]])
            if candidates.size and candidates.max() >= threshold:
                best = int(candidates.argmax())
                owner = kept[best] if best < len(kept) else start + kept_in_chunk[best - len(kept)]
                duplicates[start + i] = (owner, float(candidates[best]))
            else:
                kept_in_chunk.append(i)
        kept.extend(start + i for i in kept_in_chunk)
    return duplicates
