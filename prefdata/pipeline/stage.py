"""The stage contract: a stage maps a table (one input shard) to a table, plus rejects and counts.

Stages declare the columns they read and the columns they add; `check_chain` verifies a recipe's
stage list against the input's columns once, before anything runs. A stage holds no global
state: it is built from its typed config, acquires engines in `setup(ctx)`, and processes
shards independently, so an executor may run shards in any order or on other machines.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from prefdata.pipeline.context import BuildContext
from prefdata.schemas.errors import PrefdataError, Reject

RATE_NUM, RATE_DEN = "__num", "__den"


@dataclass
class StageStats:
    """Counts of one stage: rows in/out, drops by reason, other counters, seconds."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    drops: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    estimates: list[dict[str, Any]] = field(default_factory=list)  # one entry per shard that made any
    fit: dict[str, Any] = field(default_factory=dict)  # whole-input stages: the fit's key, seconds, summary

    def merge(self, other: StageStats) -> StageStats:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.drops.update(other.drops)
        self.counters.update(other.counters)
        self.seconds += other.seconds
        self.estimates.extend(other.estimates)
        self.fit = self.fit or dict(other.fit)
        return self

    def rates(self) -> dict[str, float]:
        """Ratios a stage reports as two counters, `<name>__num` and `<name>__den` (counts add up
        across shards and machines; their ratio is taken once, here)."""
        out = {}
        for key, den in self.counters.items():
            if key.endswith(RATE_DEN) and den:
                name = key[: -len(RATE_DEN)]
                out[name] = round(self.counters.get(name + RATE_NUM, 0) / den, 6)
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "rows_in": self.rows_in, "rows_out": self.rows_out,
               "drops": dict(sorted(self.drops.items())), "counters": dict(sorted(self.counters.items())),
               "seconds": round(self.seconds, 3)}
        if rates := self.rates():
            out["rates"] = rates
        if self.fit:
            out["fit"] = self.fit
        return out

    def to_record(self) -> dict[str, Any]:
        """Everything needed to rebuild these stats (checkpoints, Ray workers): `as_dict` plus the
        unrounded seconds and the shard estimates, so a resumed or remote shard loses nothing."""
        return {**self.as_dict(), "seconds": self.seconds, "estimates": self.estimates}

    @classmethod
    def from_record(cls, data: dict[str, Any], name: str | None = None) -> StageStats:
        return cls(name or data["name"], rows_in=data["rows_in"], rows_out=data["rows_out"],
                   drops=Counter(data["drops"]), counters=Counter(data["counters"]), seconds=data["seconds"],
                   estimates=list(data.get("estimates", [])), fit=dict(data.get("fit") or {}))


@dataclass
class StageOutput:
    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    # Dataset-level estimates (e.g. {"flip_rate": {...}}): the build combines the shards' entries with
    # `Stage.combine_estimates` and writes them under stats.json `estimates`.
    estimates: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One step of a build. Subclasses set `name`, `reads`, `adds` and implement `process`."""

    name: ClassVar[str]
    citation: ClassVar[str | None] = None  # BibTeX of the method, for the dataset card
    reads: ClassVar[tuple[str, ...]] = ()
    # Columns the stage's output has in place of its input's (generators) or in addition (filters).
    adds: ClassVar[tuple[str, ...]] = ()
    replaces_columns: ClassVar[bool] = False  # True for generators: output columns are `adds` only

    def __init__(self, config: BaseModel):
        self.config = config

    def setup(self, ctx: BuildContext) -> None:  # noqa: B027 - stages without engines need nothing
        """Acquire engines and models (called once per process before the first shard)."""

    @abstractmethod
    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        """Map one shard to its output table, rejects (with reasons) and counters."""

    def identity(self) -> dict[str, Any]:
        """The stage's own part of its run identity (`prefdata.pipeline.identity.stage_identity`, the
        one function checkpoints use): its type and config. The engines the config names, the
        seed, local model files and versions are added there; a stage whose output depends on
        anything else overrides this and adds it (JSON-serialisable, known before `setup`)."""
        return {"stage": self.name, "config": self.config.model_dump(mode="json")}

    def output_columns(self, input_columns: Sequence[str]) -> list[str]:
        if self.replaces_columns:
            return list(self.adds)
        return list(input_columns) + [c for c in self.adds if c not in input_columns]

    def combine_estimates(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        """One dataset-level value per key from the shards' estimates. One shard: as it is; several: a
        list per key (a stage whose estimates combine, e.g. by row-weighted averaging, overrides this)."""
        if len(shards) <= 1:
            return dict(shards[0]) if shards else {}
        keys = dict.fromkeys(k for shard in shards for k in shard)
        return {k: [shard[k] for shard in shards if k in shard] for k in keys}

    def run(self, table: pa.Table, ctx: BuildContext) -> tuple[StageOutput, StageStats]:
        start = time.perf_counter()
        out = self.process(table, ctx)
        check_accounting(self, table, out)
        stats = StageStats(self.name, rows_in=table.num_rows, rows_out=out.table.num_rows,
                           drops=Counter(r.reason.value for r in out.rejects), counters=Counter(out.counters),
                           seconds=time.perf_counter() - start, estimates=[out.estimates] if out.estimates else [])
        return out, stats


class EngineStage(Stage):
    """A stage that runs one engine, named by its config's `engine` field, loaded at setup (the
    engine's identity is part of the stage's run identity through that name)."""

    def __init__(self, config: BaseModel):
        super().__init__(config)
        self.engine: Any = None

    def setup(self, ctx: BuildContext) -> None:
        self.engine = ctx.engine(self.config.engine)


class WholeInputStage(Stage):
    """A stage whose decision needs every row: map -> fit -> apply.

    * `score(shard)`: per shard, in parallel; adds per-row columns (may add none). It keeps every row
      in order: it never drops, so an executor can gather the fit view in global input order.
    * `fit(view)`: once, over a view of ONLY the columns in `fit_columns`, gathered from all shards in
      shard order (ids, scores, embeddings; never texts unless declared). Returns the fitted state, a
      JSON-serialisable dict (cut points, an estimate, keep/drop sets, trained heads); `describe(fitted)`
      is its summary for stats.json and `fit_estimates(fitted)` its dataset-level estimates.
    * `apply(shard, fitted)`: per shard, in parallel: the decision, rejects and counters.
    * `publish(fitted)`: what later stages' fits read of this one (`ctx.info` entries), set by the
      executor wherever those fits run; `apply` must not pass state to later stages through `ctx`.

    `scratch` columns are written by `score` for `fit`/`apply` only and removed by the executor after
    `apply`. The executors barrier at a whole-input stage (all shards scored, one fit, then apply) and
    checkpoint the fitted state (`prefdata.pipeline.checkpoint`), so a resumed build reuses it.
    `process` runs the three phases on one table (a stage run by hand, or `per_shard = true`).
    """

    fit_columns: ClassVar[tuple[str, ...]] = ("id",)
    scratch: ClassVar[tuple[str, ...]] = ()  # columns `score` adds for fit/apply, dropped after apply

    @property
    def whole_input(self) -> bool:
        """False when the user asked for per-shard decisions (`per_shard = true` on the config)."""
        return not getattr(self.config, "per_shard", False)

    def score(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        """Per-shard scoring; the default adds nothing."""
        return StageOutput(table)

    @abstractmethod
    def fit(self, view: pa.Table, ctx: BuildContext) -> dict[str, Any]:
        """The fitted state from the fit view (columns `fit_columns` of every row, in input order)."""

    @abstractmethod
    def apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> StageOutput:
        """Per-shard decision with the fitted state."""

    def describe(self, fitted: dict[str, Any]) -> dict[str, Any]:
        """What stats.json shows of the fitted state (the whole state when it is small)."""
        return fitted

    def fit_estimates(self, fitted: dict[str, Any]) -> dict[str, Any]:
        """Dataset-level estimates of the fit (stats.json `estimates`)."""
        return {}

    def publish(self, fitted: dict[str, Any]) -> dict[str, Any]:
        """What later stages' fits read of this fit, as `ctx.info` entries (e.g. a scorer's accuracy on
        held-out pairs, for the noise stage). The executors set it in the context of every later fit,
        from a fresh fit or a checkpointed one and wherever the fits run, so a resumed or distributed
        build gives later fits what an uninterrupted local one does. Nothing by default."""
        return {}

    def process(self, table: pa.Table, ctx: BuildContext) -> StageOutput:
        scored = self.run_score(table, ctx)[0]
        fitted = self.fit(fit_view(self, [scored.table]), ctx)
        if ctx is not None:
            ctx.info.update(self.publish(fitted))
        out = self.run_apply(scored.table, fitted, ctx)[0]
        return StageOutput(out.table, out.rejects, Counter(scored.counters) + Counter(out.counters),
                           self.fit_estimates(fitted))

    def run_score(self, table: pa.Table, ctx: BuildContext) -> tuple[StageOutput, StageStats]:
        start = time.perf_counter()
        out = self.score(table, ctx)
        check_accounting(self, table, out)
        if out.table.num_rows != table.num_rows or out.rejects:
            raise AccountingError(f"stage {self.name}: score must keep every row ({table.num_rows} in, "
                                  f"{out.table.num_rows} out, {len(out.rejects)} rejects)")
        stats = StageStats(self.name, rows_in=table.num_rows, rows_out=table.num_rows, counters=Counter(out.counters),
                           seconds=time.perf_counter() - start)
        out.counters = Counter(out.counters)
        return out, stats

    def run_fit(self, view: pa.Table, ctx: BuildContext) -> tuple[dict[str, Any], StageStats]:
        start = time.perf_counter()
        fitted = self.fit(view, ctx)
        estimates = self.fit_estimates(fitted)
        stats = StageStats(self.name, seconds=time.perf_counter() - start, estimates=[estimates] if estimates else [])
        stats.fit = {"rows": view.num_rows, "seconds": round(stats.seconds, 3), "state": self.describe(fitted)}
        return fitted, stats

    def run_apply(self, table: pa.Table, fitted: dict[str, Any], ctx: BuildContext) -> tuple[StageOutput, StageStats]:
        start = time.perf_counter()
        out = self.apply(table, fitted, ctx)
        check_accounting(self, table, out)
        extra = [c for c in self.scratch if c in out.table.column_names]
        if extra:
            out.table = out.table.drop_columns(extra)
        stats = StageStats(self.name, rows_in=table.num_rows, rows_out=out.table.num_rows,
                           drops=Counter(r.reason.value for r in out.rejects), counters=Counter(out.counters),
                           seconds=time.perf_counter() - start, estimates=[out.estimates] if out.estimates else [])
        return out, stats


def is_whole_input(stage: Stage) -> bool:
    """True for a stage the executors run as map -> fit -> apply (a barrier across shards)."""
    return isinstance(stage, WholeInputStage) and stage.whole_input


def fit_view(stage: WholeInputStage, shards: Sequence[pa.Table]) -> pa.Table:
    """The fit view: `fit_columns` of every shard, in shard order (rows in each shard's order)."""
    parts = [shard.select(list(stage.fit_columns)) for shard in shards]
    if not parts:
        raise ValueError(f"stage {stage.name}: no shards to fit on")
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


class ChainError(ValueError):
    pass


class AccountingError(PrefdataError):
    """A stage lost, invented or duplicated rows: a bug in the stage, never a data problem."""


def _ids(table: pa.Table, column: str) -> list[str]:
    return table.column(column).to_pylist() if column in table.column_names else []


def _shown(ids: Iterable[Any]) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")


def check_accounting(stage: Stage, table: pa.Table, out: StageOutput) -> None:
    """The stage contract on one shard: no row is dropped without a reject, invented or duplicated.

    * 1:1 stages (filters, scorers): every input id is in the output or in a reject, not both;
      the output has only input ids, each once (so rows in = rows out + rejected rows).
    * Generators (`replaces_columns`): every input row leads to output rows or to a reject: its
      `prompt_id` (a pair input) or its `id` (a prompt input) appears as an output `prompt_id`, or
      its `id` as a reject's `row_id`.
    Raises `AccountingError` naming the stage and the ids."""
    in_ids = _ids(table, "id")
    if not in_ids and table.num_rows:
        return  # a table without ids (a stage run by hand on raw data): nothing to account by
    rejected = [r.row_id for r in out.rejects]
    if stage.replaces_columns:
        produced, rejected_set = set(_ids(out.table, "prompt_id")), set(rejected)
        lineage = _ids(table, "prompt_id") or in_ids
        lost = [i for i, key in zip(in_ids, lineage) if key not in produced and i not in rejected_set]
        if lost:
            raise AccountingError(f"stage {stage.name}: {len(lost)} input rows gave neither output rows nor a "
                                  f"reject: {_shown(lost)}")
        return
    out_ids = _ids(out.table, "id")
    problems = []
    if len(set(out_ids)) != len(out_ids):
        problems.append(f"duplicated output ids {_shown(i for i, n in Counter(out_ids).items() if n > 1)}")
    if invented := set(out_ids) - set(in_ids):
        problems.append(f"output ids not in its input {_shown(invented)}")
    if both := set(out_ids) & set(rejected):
        problems.append(f"ids both kept and rejected {_shown(both)}")
    if lost := set(in_ids) - set(out_ids) - set(rejected):
        problems.append(f"input ids neither kept nor rejected {_shown(lost)}")
    if not problems and table.num_rows != out.table.num_rows + len(out.rejects):
        problems.append(f"rows in {table.num_rows} != rows out {out.table.num_rows} + rejects {len(out.rejects)}")
    if problems:
        raise AccountingError(f"stage {stage.name}: broke the row accounting: {'; '.join(problems)}")


def check_chain(stages: Iterable[Stage], input_columns: Sequence[str]) -> list[str]:
    """Raise ChainError naming the first stage whose input lacks a column it reads (or, for a
    whole-input stage, whose fit view declares a column neither its input nor its score has)."""
    columns = list(input_columns)
    for index, stage in enumerate(stages):
        missing = [c for c in stage.reads if c not in columns]
        if missing:
            raise ChainError(f"stage {index} ({stage.name}) reads {missing}, but its input has only {columns}")
        if isinstance(stage, WholeInputStage):
            if not stage.fit_columns:
                raise ChainError(f"stage {index} ({stage.name}) is a whole-input stage without fit_columns")
            available = set(columns) | set(stage.adds) | set(stage.scratch)
            missing = [c for c in stage.fit_columns if c not in available]
            if missing:
                raise ChainError(f"stage {index} ({stage.name}) fits on {missing}, which neither its input {columns} "
                                 f"nor its score step {list(stage.adds) + list(stage.scratch)} has")
        columns = stage.output_columns(columns)
    return columns
