"""The Ray executor: the recipe's stages as `ray.data` actor pools, one loaded engine per actor.

The dataset is one row per shard (an "envelope": shard index, checkpoint keys, the shard's table
as Arrow IPC, the stats gathered so far). Each stage is a `map_batches` over it with a callable
class, so Ray keeps `concurrency` actors per stage, each holding the stage and its engines loaded
once (`num_gpus`/`num_cpus` per actor from `[executor]`), and streams shards from one stage's
pool to the next.

The shards' rows never pass through the driver's memory or its view of the object store (a
driver on a small head node, 1M pairs in 16 shards: `bench/curate_scale.py`). The driver writes
each input shard to a scratch Arrow file under `OUT/.prefdata/ray/input/` as it reads the source
(a streamed source is never held whole) and the first stage's actor reads it. Each actor spills
its stage's rejects to `OUT/.prefdata/rejects/` (`prefdata.pipeline.rejects.write_part`), and the
last stage's actor writes the shard, sorted by id, to the file the local executor would write.
What comes back to the driver is the stats and the reject parts' names. The output folder
therefore has to be on storage every node sees (NFS, a mounted bucket; trivially true for a local
cluster); the driver checks that it sees every shard's file and says so if it does not.

Decisions:
* A map_batches call gets exactly one shard. Rows per call are `[output] shard_size`, the same
  unit as the local executor's, so a stage sees the same tables, the engines the same request
  chunks, and the pairs are byte-identical; checkpoints and error messages can name the shard.
* Checkpoints are the local executor's files (`prefdata.pipeline.checkpoint`), written by the
  actors into the output folder. The driver finds the stages a shard already finished before
  submitting it (the actor reads the last one's table), and never submits a shard that is complete.
* A whole-input stage (`WholeInputStage`: map -> fit -> apply) is a barrier: its `score` runs in
  a pool like any stage, the dataset is materialised, the fit view is a column projection of it
  (each actor's `map_batches` keeps only the declared fit columns of its shards; the driver
  never sees full rows), the driver fits once and checkpoints the fitted state, and an `apply`
  pool, constructed with the fitted state, maps every shard on. The output equals the local
  executor's (same fit view, same per-shard apply).
* Failures: an actor that dies (OOM, preemption, `kill -9`) is restarted and its shard retried,
  up to `max_retries` times (Ray's `max_restarts`/`max_task_retries`). Each actor notes the
  shard it is on in `OUT/.prefdata/ray/running/`, so when the retries are spent the build
  fails naming that shard. A Python exception in a stage is not retried (it would fail again)
  and is re-raised naming the stage and shard. Shards finished before a failure stay written,
  with their checkpoints, for the next run to resume from.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from prefdata.faults import fault_point
from prefdata.pipeline.checkpoint import STATE_DIR, Checkpoints, table_fingerprint
from prefdata.pipeline.context import BuildContext, EnginePool
from prefdata.pipeline.executor import (
    BuildJob,
    ExecutorOutcome,
    ExecutorSettings,
    RunSettings,
    build_checkpoints,
    engine_pool,
)
from prefdata.pipeline.local import ExecutionResult, join_phases
from prefdata.pipeline.rejects import SPILL_DIR, RejectLog, write_part
from prefdata.pipeline.stage import Stage, StageStats, is_whole_input
from prefdata.schemas.errors import PrefdataError, rejects_table
from prefdata.schemas.writers import read_as_built, shard_path, write_bytes_atomic, write_shard

RUNNING_DIR = f"{STATE_DIR}/ray/running"
INPUT_DIR = f"{STATE_DIR}/ray/input"  # the input shards as Arrow files, read by the first stage's actors
# Test-only: "<stage position>:<shard or *>[:<marker file>]" makes the actor running that stage on that
# shard SIGKILL itself; with a marker file only once (the file records that it happened).
KILL_SHARD_ENV = "PREFDATA_RAY_KILL_SHARD"
# Test-only, with KILL_SHARD_ENV: the actor dies only once a file matching this glob exists for another
# shard (e.g. its checkpoint), so a test does not depend on the order Ray runs the shards in.
KILL_AFTER_ENV = "PREFDATA_RAY_KILL_AFTER"
FORWARDED_ENV_PREFIXES = ("PREFDATA_", "HF_", "TRANSFORMERS_", "VLLM_")

ENVELOPE = pa.schema([
    ("shard", pa.int64()),
    ("next", pa.int32()),  # position of the first stage still to run
    ("keys", pa.list_(pa.string())),  # checkpoint key per stage (empty without checkpoints)
    ("source", pa.string()),  # the file holding the shard's table while `table` is empty (input or checkpoint)
    ("table", pa.binary()),  # the shard's current table, Arrow IPC stream (empty once written)
    ("meta", pa.string()),  # JSON: stage stats, reject parts, engine identities, actor setup seconds
])


class ShardFailed(PrefdataError):
    """A stage failed on a shard (retries spent, or an error a retry would repeat)."""


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def write_arrow_file(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_table_file(path: str) -> pa.Table:
    """An input shard (Arrow file, `INPUT_DIR`) or a stage checkpoint (Parquet), as it was built."""
    if path.endswith(".arrow"):
        with pa.memory_map(path) as source:
            return pa.ipc.open_file(source).read_all()
    return read_as_built(path)


def envelope_table(row: dict[str, Any]) -> pa.Table:
    return from_ipc(row["table"]) if row["table"] else read_table_file(row["source"])


def stats_to_dict(stats: StageStats) -> dict[str, Any]:
    return stats.to_record()


def stats_from_dict(data: dict[str, Any]) -> StageStats:
    return StageStats.from_record(data)


class RunningShards:
    """`OUT/.prefdata/ray/running/<position>-<stage>.shard-<index>`: a shard an actor has started and
    not finished, with the number of attempts; what is left after a failure names the failing shard."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir) / RUNNING_DIR

    def _path(self, position: int, stage: str, index: int) -> Path:
        return self.root / f"{position:02d}-{stage}.shard-{index:05d}"

    def start(self, position: int, stage: str, index: int) -> int:
        path = self._path(position, stage, index)
        attempt = int(path.read_text() or 0) + 1 if path.is_file() else 1
        write_bytes_atomic(str(attempt).encode(), path)
        return attempt

    def finish(self, position: int, stage: str, index: int) -> None:
        self._path(position, stage, index).unlink(missing_ok=True)

    def clear(self) -> None:
        if self.root.is_dir():
            for path in self.root.iterdir():
                path.unlink()

    def pending(self) -> list[tuple[int, str, int, int]]:
        """(shard, stage, position, attempts) of every unfinished shard, lowest shard first."""
        found = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                head, _, shard = path.name.partition(".shard-")
                position, _, stage = head.partition("-")
                if shard.isdigit() and position.isdigit():
                    found.append((int(shard), stage, int(position), int(path.read_text() or 0)))
        return sorted(found)


def _kill_hook(position: int, index: int) -> None:
    spec = os.environ.get(KILL_SHARD_ENV)
    if not spec:
        return
    stage, shard, *marker = spec.split(":", 2)
    if int(stage) != position or shard not in ("*", str(index)):
        return
    after = os.environ.get(KILL_AFTER_ENV)
    if after and not [p for p in glob.glob(after) if f"shard-{index:05d}-" not in Path(p).name]:
        return
    if marker:
        flag = Path(marker[0])
        if flag.exists():
            return
        flag.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


class StageWorker:
    """One actor of a stage's pool: the stage, set up once with its own engines, mapping shards."""

    def __init__(self, stage_config: Any, stage_factory: Callable[[Any], Stage], settings: RunSettings, position: int,
                 out_dir: str, use_cache: bool, stage_fingerprints: list[str] | None, input_rows: int,
                 phase: str = "run", fitted: dict[str, Any] | None = None, last: bool = False):
        self.position, self.out_dir, self.last = position, Path(out_dir), last  # last: writes the finished shard
        self.phase, self.fitted = phase, fitted  # run (a per-shard stage), or score / apply of a whole-input one
        self.stage = stage_factory(stage_config)
        self.pool, self.store = engine_pool(settings, Path(out_dir), use_cache)
        # input_rows/shard_size: stages that need the whole input (cross-fitting, dataset estimates) check it
        self.ctx = BuildContext.for_input(self.pool, settings.seed, input_rows, settings.shard_size)
        started = time.perf_counter()
        try:
            self.stage.setup(self.ctx)
        except Exception as exc:
            raise ShardFailed(f"stage {position} ({self.stage.name}) could not start on a Ray worker: "
                              f"{type(exc).__name__}: {exc}") from exc
        self.setup_seconds = time.perf_counter() - started
        self.checkpoints = Checkpoints(out_dir, stage_fingerprints) if stage_fingerprints is not None else None
        self.running = RunningShards(Path(out_dir))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self._one(row) for row in batch.to_pylist()], schema=ENVELOPE)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        position, name, index = self.position, self.stage.name, row["shard"]
        if row["next"] > position:  # resumed past this stage from its checkpoint
            return row
        label = name if self.phase == "run" else f"{name}.{self.phase}"
        self.running.start(position, label, index)
        if self.phase != "apply":
            _kill_hook(position, index)
        meta = json.loads(row["meta"])
        try:
            table = envelope_table(row)
            if self.phase == "score":
                out, stats = self.stage.run_score(table, self.ctx)
            elif self.phase == "apply":
                out, stats = self.stage.run_apply(table, self.fitted, self.ctx)
                stats = join_phases(stats_from_dict(meta["stats"].pop()), stats)
            else:
                out, stats = self.stage.run(table, self.ctx)
        except Exception as exc:
            raise ShardFailed(f"stage {position} ({label}) failed on shard {index}: {type(exc).__name__}: {exc}") from exc
        if self.phase == "score":  # the stage is half done: the apply pool finishes it
            meta["stats"].append(stats_to_dict(stats))
            self.running.finish(position, label, index)
            return {**row, "table": to_ipc(out.table), "meta": json.dumps(meta)}
        if self.checkpoints is not None:
            self.checkpoints.save(position, name, index, row["keys"][position], out, stats)
        meta["stats"].append(stats_to_dict(stats))
        meta["engines"].update(self.pool.loaded())
        meta["setup"][str(position)] = max(meta["setup"].get(str(position), 0.0), self.setup_seconds)
        if out.rejects:
            part = write_part(self.out_dir / SPILL_DIR, rejects_table(out.rejects), index, position)
            meta["rejects"].append([position, str(part), len(out.rejects)])
        if self.last:  # the driver never receives the rows: it checks that it sees this file
            write_shard(out.table, self.out_dir, index)
            meta["rows"], data = out.table.num_rows, b""
        else:
            data = to_ipc(out.table)
        self.running.finish(position, label, index)
        return {**row, "next": position + 1, "table": data, "meta": json.dumps(meta)}


def worker_env() -> dict[str, str]:
    """Environment for the actors: this prefdata first on the path (a source checkout used without
    installing it), and the PREFDATA_/HF_ settings of the driver."""
    package_root = Path(__file__).resolve().parents[2]  # the folder holding prefdata/
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    if package_root.name not in {"site-packages", "dist-packages"}:  # installed copies are the nodes' own
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), os.environ.get("PYTHONPATH")) if p)
    return env


class RayExecutor:
    """Runs the stages on a Ray cluster (`[executor] kind = "ray"`); see the module docstring."""

    def __init__(self, config: ExecutorSettings):
        self.config = config

    def run(self, job: BuildJob) -> ExecutorOutcome:
        import ray

        if job.stage_factory is None or len(job.stage_configs) != len(job.stages):
            raise PrefdataError("the Ray executor needs the stages' configs and a stage factory "
                                "(BuildJob.stage_configs, BuildJob.stage_factory; prefdata.builder.job_for sets them)")
        started_here = not ray.is_initialized()
        if started_here:
            self._connect(ray)
        try:
            return self._run(job)
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> None:
        cfg = self.config
        if cfg.address:
            ray.init(address=cfg.address, logging_level="WARNING")
            return
        memory = cfg.local_object_store_mb * 1024**2 if cfg.local_object_store_mb else None
        ray.init(num_cpus=cfg.local_num_cpus, object_store_memory=memory, include_dashboard=False,
                 logging_level="WARNING")

    def _run(self, job: BuildJob) -> ExecutorOutcome:
        identities = EnginePool(job.settings.engines)  # a vLLM/transformers engine's identity needs no loading
        try:
            checkpoints = build_checkpoints(job, identities)
        finally:
            identities.close()
        run = _RayRun(self.config, job, checkpoints)
        try:
            envelopes = run.resume()
            if envelopes:
                run.run_pools(envelopes)
        finally:  # scratch: a rerun writes them again (and resumes from the checkpoints)
            shutil.rmtree(run.inputs, ignore_errors=True)
        return run.outcome()

    @staticmethod
    def _resume(index: int, source: Path, job: BuildJob, checkpoints: Checkpoints | None, keys: list[str],
                whole: list[bool], fits: dict[int, str]):
        """The stages of shard `index` (input file `source`) that have checkpoints: (the file of its table
        after them, rejects per stage, stats), stopping at a whole-input stage whose fit has no checkpoint
        (every shard redoes it from there)."""
        rejects, stats = [], []
        for position, stage in enumerate(job.stages if checkpoints is not None else []):
            if whole[position] and not checkpoints.has_fit(position, stage.name, fits[position]):
                break
            found = checkpoints.load(position, stage.name, index, keys[position])
            if found is None:
                break
            rejects.append(found.rejects)
            stats.append(found.stats)
            source = found.table_path
        return source, rejects, stats

    @staticmethod
    def _failure(exc: Exception, running: RunningShards, unfinished: list[int], out_dir: Path) -> PrefdataError:
        kept = f"finished shards are kept in {out_dir} (run the build again to resume)"
        for cause in _causes(exc):  # a ShardFailed raised in a worker arrives wrapped by Ray
            line = _marked_line(cause)
            if line:
                return ShardFailed(f"{line}; {kept}")
        pending = running.pending()
        if pending:
            shard, stage, position, attempts = pending[0]
            return ShardFailed(f"shard {shard} failed in stage {position} ({stage}) after {attempts} attempts "
                               f"(a worker died each time: {type(exc).__name__}); {kept}")
        return ShardFailed(f"the Ray executor failed with shards {unfinished} unfinished: {type(exc).__name__}: "
                           f"{_first_line(exc)}; {kept}")


class _RayRun:
    """One Ray build: the shards resumed from checkpoints, the stage pools over the rest, the output."""

    def __init__(self, config: ExecutorSettings, job: BuildJob, checkpoints: Checkpoints | None):
        self.config, self.job, self.checkpoints = config, job, checkpoints
        self.inputs = Path(job.out_dir) / INPUT_DIR
        self.sources: list[Path] = []  # shard i's input file; the driver holds one shard at a time
        fingerprints = []
        for index, shard in enumerate(job.input_shards()):
            self.sources.append(self.inputs / f"shard-{index:05d}.arrow")
            write_arrow_file(shard, self.sources[-1])
            if checkpoints is not None:
                fingerprints.append(table_fingerprint(shard))
        self.whole = [is_whole_input(stage) for stage in job.stages]
        self.chain, self.fits = (checkpoints.chain_of(fingerprints, self.whole) if checkpoints is not None
                                 else ([[] for _ in self.sources], {}))
        self.fit_stats: dict[int, StageStats] = {}
        self.result = ExecutionResult(stats=[StageStats(stage.name) for stage in job.stages],
                                      rejects=RejectLog.spilled(job.out_dir))
        self.done: dict[int, tuple[int, list[StageStats]]] = {}  # rows written, stats (the rejects: in result)
        self.published: dict[str, Any] = {}  # what earlier fits give later ones (`WholeInputStage.publish`)
        self.engines: dict[str, Any] = {}
        self.setup: Counter = Counter()
        self.env: dict[str, str] = {}  # the actors' environment (`worker_env`)

    def finish(self, index: int, rows: int, stats: list[StageStats]) -> None:
        """Shard `index` is done: its rows are written (`shard_path`) and its rejects in the log."""
        path = shard_path(self.job.out_dir, index)
        if not path.is_file():
            raise ShardFailed(f"shard {index} was written by a Ray worker to {path}, which the driver does not see: "
                              f"the output folder must be on storage every node sees (NFS, a mounted bucket)")
        self.done[index] = (rows, stats)
        if self.job.on_shard is not None:
            self.job.on_shard(len(self.done), len(self.sources))

    def resume(self) -> list[dict[str, Any]]:
        """Shards complete from their checkpoints are written now; the others become envelopes that name
        the file their table is in (their input, or their last checkpoint)."""
        job, stages, envelopes = self.job, self.job.stages, []
        for index, source in enumerate(self.sources):
            source, rejects, stats = RayExecutor._resume(index, source, job, self.checkpoints, self.chain[index],
                                                         self.whole, self.fits)
            for position, part in enumerate(rejects):
                self.result.rejects.add(part, index, order=position)
            self.result.resumed["stages"] += len(stats)
            if stats and len(stats) == len(stages) or not stages:
                self.result.resumed["shards"] += bool(stages)
                table = read_table_file(str(source))
                write_shard(table, job.out_dir, index)
                self.finish(index, table.num_rows, stats)
                continue
            meta = {"stats": [stats_to_dict(s) for s in stats], "rejects": [], "engines": {}, "setup": {}}
            envelopes.append({"shard": index, "next": len(stats), "keys": self.chain[index], "source": str(source),
                              "table": b"", "meta": json.dumps(meta)})
        return envelopes

    def pool(self, dataset, position: int, stage, phase: str = "run", fitted: dict | None = None):
        """`dataset` mapped by an actor pool of stage `position` (one shard per call)."""
        import ray.data

        job, fingerprints = self.job, self.checkpoints.stage_fingerprints if self.checkpoints is not None else None
        res = self.config.resources(position, stage.name)
        with warnings.catch_warnings():  # Ray 2.60 takes actor restarts only as ray_remote_args
            warnings.simplefilter("ignore", DeprecationWarning)
            return dataset.map_batches(
                StageWorker, batch_size=1, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=res.concurrency),
                num_cpus=res.num_cpus, num_gpus=res.num_gpus or None,
                fn_constructor_kwargs={"stage_config": job.stage_configs[position], "stage_factory": job.stage_factory,
                                       "settings": job.settings, "position": position,
                                       "out_dir": str(job.out_dir.resolve()), "use_cache": job.use_cache,
                                       "stage_fingerprints": fingerprints,
                                       "input_rows": job.rows(), "phase": phase, "fitted": fitted,
                                       "last": position == len(job.stages) - 1 and phase != "score"},
                runtime_env={"env_vars": self.env},
                max_restarts=self.config.max_retries, max_task_retries=self.config.max_retries)

    def fit(self, dataset, position: int, stage, running: RunningShards):
        """A whole-input stage: score in a pool, fit once on the driver (or load the fit), apply in a pool."""
        job, checkpoints, fits = self.job, self.checkpoints, self.fits
        loaded = checkpoints.load_fit(position, stage.name, fits[position]) if checkpoints is not None else None
        dataset = self.pool(dataset, position, stage, "score")
        if loaded is None:  # every shard is before this stage (`_resume` stops them all at a missing fit)
            try:
                dataset = dataset.materialize()
                view = fit_view_of(dataset, stage.fit_columns)
            except Exception as exc:
                raise RayExecutor._failure(exc, running, list(range(len(self.sources))), job.out_dir) from exc
            ctx = BuildContext.for_input(EnginePool(job.settings.engines), job.settings.seed, job.rows(),
                                         job.settings.shard_size)
            ctx.info.update(self.published)
            loaded = stage.run_fit(view, ctx)
            if checkpoints is not None:
                checkpoints.save_fit(position, stage.name, fits[position], *loaded)
            fault_point("fit_done")
        self.published.update(stage.publish(loaded[0]))  # for later fits, fresh or checkpointed alike
        self.fit_stats[position] = loaded[1]
        return self.pool(dataset, position, stage, "apply", loaded[0])

    def run_pools(self, envelopes: list[dict[str, Any]]) -> None:
        """The envelopes through every stage's pool; the last one writes each shard."""
        import ray.data

        out_dir = self.job.out_dir
        running = RunningShards(out_dir)
        running.clear()
        ray.data.DataContext.get_current().enable_progress_bars = False
        # one block per shard, so the shards spread over the actors
        dataset = ray.data.from_arrow([pa.Table.from_pylist([envelope], schema=ENVELOPE) for envelope in envelopes])
        self.env = worker_env()
        for position, stage in enumerate(self.job.stages):
            dataset = (self.fit(dataset, position, stage, running) if self.whole[position]
                       else self.pool(dataset, position, stage))
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    meta = json.loads(row["meta"])
                    self.engines.update(meta["engines"])
                    for position, seconds in meta["setup"].items():
                        self.setup[position] = max(self.setup[position], seconds)
                    for position, part, rows in meta["rejects"]:
                        self.result.rejects.adopt(row["shard"], position, Path(part), rows)
                    self.finish(row["shard"], meta["rows"], [stats_from_dict(s) for s in meta["stats"]])
        except Exception as exc:
            unfinished = sorted(set(range(len(self.sources))) - set(self.done))
            raise RayExecutor._failure(exc, running, unfinished, out_dir) from exc

    def outcome(self) -> ExecutorOutcome:
        """Stats and rejects merged in shard order, as the local executor merges them."""
        result, stages, checkpoints = self.result, self.job.stages, self.checkpoints
        for index in sorted(self.done):
            rows, stats = self.done[index]
            for position, part in enumerate(stats):
                result.stats[position].merge(part)
            result.shards.append(shard_path(self.job.out_dir, index))
            result.rows += rows
        for position, stats in self.fit_stats.items():
            result.stats[position].merge(stats)
        if checkpoints is not None:
            for index in range(len(self.sources)):  # the actors' checkpoint files are this build's too
                for position, key in enumerate(self.chain[index]):
                    checkpoints.load(position, stages[position].name, index, key)
            for position, key in self.fits.items():
                if position not in self.fit_stats and (found := checkpoints.load_fit(position, stages[position].name, key)):
                    result.stats[position].merge(found[1])  # every shard resumed past this fit
            checkpoints.prune()
        return ExecutorOutcome(result, self.engines, float(sum(self.setup.values())), None)


def _project(batch: pa.Table, columns: list[str]) -> pa.Table:
    """The fit columns of the shards in `batch` (envelopes), with each row's shard index."""
    parts = []
    for row in batch.to_pylist():
        shard, table = row["shard"], envelope_table(row).select(columns)
        parts.append(table.append_column("_shard", pa.array([shard] * table.num_rows, type=pa.int64())))
    return pa.concat_tables(parts)


def fit_view_of(dataset, columns) -> pa.Table:
    """A whole-input stage's fit view from the materialised envelopes: a projection computed where the
    blocks are, gathered in shard order (rows keep their order within each shard). The parts are
    ordered, not the rows: each shard's rows are one slice of a part, so the view is the gathered
    blocks themselves, never a sorted copy."""
    import pyarrow.compute as pc

    projected = dataset.map_batches(_project, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": list(columns)})
    runs = []  # (shard, arrival, slice): each shard's rows as they came
    for part in projected.iter_batches(batch_size=None, batch_format="pyarrow"):
        shards = part.column("_shard").to_numpy()
        if not len(shards):  # an empty shard: no rows, but its schema joins the view's
            runs.append((-1, len(runs), part.drop_columns(["_shard"])))
            continue
        if (shards[1:] < shards[:-1]).any():  # not one run per shard: sort this part (stable)
            part = part.take(pc.sort_indices(part, sort_keys=[("_shard", "ascending")]))
            shards = part.column("_shard").to_numpy()
        starts = [0, *(1 + (shards[1:] != shards[:-1]).nonzero()[0]).tolist()]
        for start, end in zip(starts, [*starts[1:], len(shards)]):
            runs.append((int(shards[start]), len(runs), part.slice(start, end - start).drop_columns(["_shard"])))
    runs.sort(key=lambda run: run[:2])
    return pa.concat_tables([run[2] for run in runs], promote_options="permissive")


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _marked_line(exc: BaseException) -> str | None:
    """The ShardFailed message inside a (possibly Ray-wrapped) exception's text, if any."""
    if isinstance(exc, ShardFailed):
        return str(exc)
    for line in reversed(str(exc).splitlines()):  # Ray's text ends with "...ShardFailed: <message>"
        if "ShardFailed: " in line:
            return line.split("ShardFailed: ", 1)[1]
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
