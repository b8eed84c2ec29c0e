"""What `prefdata build` shows: one live progress display, the final summary, the interrupt line.

* Progress: one line per stage with rows done / total and an ETA, advancing per engine request
  chunk (`prefdata.engines.cache.CachedEngine` reports each chunk), not per shard. A stage's rows
  done inside a shard are the shard's rows times the share of the stage's engine requests answered
  so far. Its requests are known only call by call (a generator samples, then its judge scores),
  so on a stage's first shard the share counts the calls started so far; from its second shard
  on, the requests per row the earlier shards needed. A shard's rows count as done only once the
  stage finishes it. Totals of later stages are projected from the shards seen so far (`~`).
  ETA = rows left x the stage's own seconds per row (resumed rows excluded).
* Library logs never reach the console (`prefdata.logs`): they go to `OUT/.prefdata/build.log`,
  and with `-v` are shown too.
* Every user-supplied or library text is escaped for Rich markup (`rich.markup.escape`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from prefdata.interrupt import EXIT_CODE, interruptible
from prefdata.schemas.errors import PrefdataError


@dataclass
class _Call:
    operation: str
    total: int
    done: int = 0


@dataclass
class StageTrack:
    """Progress of one stage over the whole build (pure bookkeeping, no display)."""

    name: str
    done_rows: int = 0          # rows of finished shards (resumed ones included)
    live_rows: int = 0          # of those, rows this run computed
    live_seconds: float = 0.0   # time this run spent on them
    known_rows: int = 0         # rows in of finished shards
    known_input: int = 0        # input rows of those shards
    requests: int = 0           # engine requests of live finished shards, for the next shards' share
    # the shard being run
    shard: int | None = None
    shard_rows: int = 0
    shard_input: int = 0
    started: float = 0.0
    ended: float | None = None  # when the next stage took over the shard
    calls: list[_Call] = field(default_factory=list)
    peak: int = 0  # rows of the running shard shown so far (the count never goes back)

    def start(self, shard: int, rows: int, input_rows: int, now: float) -> None:
        self.shard, self.shard_rows, self.shard_input, self.calls = shard, rows, input_rows, []
        self.started, self.ended, self.peak = now, None, 0

    def elapsed(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started if self.shard is not None else 0.0

    def chunk(self, operation: str, done: int, total: int) -> None:
        last = self.calls[-1] if self.calls else None
        if last is None or last.done >= last.total or done <= last.done or last.operation != operation:
            last = _Call(operation, total)
            self.calls.append(last)
        last.done = done

    def share(self) -> float:
        """Share of the running shard's engine work done (0 when unknown)."""
        if self.shard is None or not self.calls:
            return 0.0
        done = sum(c.done for c in self.calls)
        planned = sum(c.total for c in self.calls)
        if self.live_rows and self.requests:
            planned = max(planned, round(self.requests / self.live_rows * self.shard_rows))
        return min(done / planned, 1.0) if planned else 0.0

    def running_rows(self) -> int:
        """Rows of the running shard counted as done (never the whole shard before it finishes)."""
        if self.shard is None or self.shard_rows == 0:
            return 0
        self.peak = max(self.peak, min(int(self.shard_rows * self.share()), self.shard_rows - 1))
        return self.peak

    def finish(self, rows_in: int, input_rows: int, live: bool, now: float) -> None:
        self.done_rows += rows_in
        self.known_rows += rows_in
        self.known_input += input_rows
        if live:
            self.live_rows += rows_in
            self.live_seconds += self.elapsed(now)
            self.requests += sum(c.total for c in self.calls)
        self.shard, self.shard_rows, self.calls, self.peak = None, 0, [], 0

    def total(self, input_rows: int) -> tuple[int | None, bool]:
        """(total rows in, exact?) of this stage: what finished shards gave, plus the running shard,
        plus a projection for the input rows not seen yet."""
        known, seen = self.known_rows, self.known_input
        if self.shard is not None:
            known, seen = known + self.shard_rows, seen + self.shard_input
        if seen >= input_rows:
            return known, True
        if seen == 0:
            return None, False
        return known + round(known / seen * (input_rows - seen)), False

    def eta(self, input_rows: int, now: float) -> float | None:
        total, _ = self.total(input_rows)
        running = self.shard_rows * self.share() if self.shard is not None else 0.0
        rows = self.live_rows + running
        seconds = self.live_seconds + self.elapsed(now)
        if total is None or rows <= 0 or seconds <= 0:
            return None
        return max(total - self.done_rows - running, 0.0) * seconds / rows

    def detail(self) -> str:
        if self.shard is None or not self.calls:
            return ""
        call = self.calls[-1]
        return f"{call.operation} {call.done}/{call.total}"


class BuildProgressModel:
    """Implements `prefdata.pipeline.context.BuildProgress` as bookkeeping a display reads."""

    def __init__(self, stage_names: list[str] | None = None, clock=time.monotonic):
        self.clock = clock
        self.stages = [StageTrack(name) for name in stage_names or []]
        self.shard_rows: list[int] = []
        self.shards_done = 0
        self.shards_total: int | None = None
        self.current: int | None = None  # position of the running stage

    @property
    def input_rows(self) -> int:
        return sum(self.shard_rows)

    def begin(self, stages: list[str], shard_rows: list[int]) -> None:
        self.stages = [StageTrack(name) for name in stages]
        self.shard_rows = list(shard_rows)
        self.shards_total = len(shard_rows)

    def stage_started(self, position: int, shard: int, rows: int) -> None:
        while len(self.stages) <= position:
            self.stages.append(StageTrack(f"stage {len(self.stages)}"))
        now = self.clock()
        if self.current is not None and self.current != position:
            self.stages[self.current].ended = now
        self.current = position
        self.stages[position].start(shard, rows, self.shard_rows[shard] if shard < len(self.shard_rows) else rows,
                                    now)

    def engine_chunk(self, operation: str, done: int, total: int) -> None:
        if self.current is not None:
            self.stages[self.current].chunk(operation, done, total)

    def shard_done(self, shard: int, counts: list[tuple[int, int]], resumed_stages: int) -> None:
        for position, (rows_in, _rows_out) in enumerate(counts):
            self._stage_finished(position, shard, rows_in, resumed=position < resumed_stages,
                                 first_rows=counts[0][0])
        self.current = None
        self.shards_done += 1

    def stage_done(self, position: int, shard: int, rows_in: int, resumed: bool) -> None:
        self._stage_finished(position, shard, rows_in, resumed, first_rows=rows_in)
        if self.current == position:
            self.current = None

    def _stage_finished(self, position: int, shard: int, rows_in: int, resumed: bool, first_rows: int) -> None:
        input_rows = self.shard_rows[shard] if shard < len(self.shard_rows) else first_rows
        while len(self.stages) <= position:
            self.stages.append(StageTrack(f"stage {len(self.stages)}"))
        self.stages[position].finish(rows_in, input_rows, live=not resumed, now=self.clock())

    def on_shard(self, done: int, total: int | None) -> None:
        """`run_build(on_shard=...)`: the shard count (the only report the Ray executor makes;
        a streamed input's total is unknown: None)."""
        self.shards_done = max(self.shards_done, done)
        if total is not None:
            self.shards_total = total

    def rows(self, position: int) -> tuple[int, int | None, bool]:
        stage = self.stages[position]
        total, exact = (self.input_rows, True) if position == 0 and self.shards_total else stage.total(self.input_rows)
        return stage.done_rows + stage.running_rows(), total, exact


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


class BuildConsole(BuildProgressModel):
    """The live display of one build on a Rich console (stderr), plus its summary lines."""

    def __init__(self, console: Console, quiet: bool = False, verbose: bool = False, stage_names: list[str] | None = None):
        super().__init__(stage_names)
        self.console, self.quiet, self.verbose = console, quiet, verbose
        self.display = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                TextColumn("{task.fields[rows]}"), TextColumn("{task.fields[eta]}"),
                                TextColumn("[dim]{task.fields[detail]}"),
                                console=console, disable=quiet, transient=True, refresh_per_second=4,
                                redirect_stdout=False, redirect_stderr=False)
        self._tasks: list[Any] = []
        self._shards_task = self.display.add_task("shards", total=None, rows="", eta="", detail="")
        self.log_path: Path | None = None

    # --- BuildProgress, each event also refreshes the display ---
    def begin(self, stages: list[str], shard_rows: list[int]) -> None:
        super().begin(stages, shard_rows)
        self._refresh()

    def stage_started(self, position: int, shard: int, rows: int) -> None:
        super().stage_started(position, shard, rows)
        self._refresh()

    def engine_chunk(self, operation: str, done: int, total: int) -> None:
        super().engine_chunk(operation, done, total)
        self._refresh()

    def shard_done(self, shard: int, counts: list[tuple[int, int]], resumed_stages: int) -> None:
        super().shard_done(shard, counts, resumed_stages)
        self._refresh()

    def stage_done(self, position: int, shard: int, rows_in: int, resumed: bool) -> None:
        super().stage_done(position, shard, rows_in, resumed)
        self._refresh()

    def on_shard(self, done: int, total: int | None) -> None:
        super().on_shard(done, total)
        self._refresh()

    def _refresh(self) -> None:
        if self.quiet:
            return
        now = self.clock()
        total = self.shards_total
        self.display.update(self._shards_task, completed=self.shards_done, total=total,
                            rows=f"{self.shards_done}/{total if total is not None else '?'}")
        for position, stage in enumerate(self.stages):
            while len(self._tasks) <= position:
                self._tasks.append(self.display.add_task(escape(self.stages[len(self._tasks)].name), total=None,
                                                         rows="", eta="", detail=""))
            done, rows_total, exact = self.rows(position)
            eta = stage.eta(self.input_rows, now)
            shown_total = "?" if rows_total is None else f"{'' if exact else '~'}{rows_total}"
            self.display.update(self._tasks[position], completed=done, total=rows_total,
                                rows=f"{done}/{shown_total} rows",
                                eta="" if eta is None or done >= (rows_total or 0) else f"ETA {format_seconds(eta)}",
                                detail=escape(stage.detail()))

    # --- around the build ---
    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Show the display and handle Ctrl-C/SIGTERM: the one interrupt line and exit code 130."""
        import typer

        with interruptible() as stop:
            live = not self.quiet and self.console.is_terminal  # elsewhere a live display shows nothing
            if live:
                self.display.start()
            try:
                yield
            except BaseException as exc:
                if stop.signal is None:
                    if self.log_path is not None and not isinstance(exc, PrefdataError):  # a crash: where to look
                        self.console.print(f"the engines' logs are in {escape(str(self.log_path))}", highlight=False,
                                           soft_wrap=True)
                    raise
            finally:
                if live:
                    self.display.stop()
            if stop.signal is not None:
                self.print_interrupted()
                raise typer.Exit(code=EXIT_CODE)

    @contextlib.contextmanager
    def capture(self, out_dir: Path) -> Iterator[None]:
        """`run_build(capture=...)`: library output to OUT/.prefdata/build.log while engines run."""
        from prefdata.logs import BUILD_LOG_FILE, capture_output

        self.log_path = Path(out_dir) / BUILD_LOG_FILE
        echo = (lambda line: self.console.print(Text(line), soft_wrap=True)) if self.verbose else None
        previous = self.console._file  # None: the console follows sys.stderr
        with capture_output(self.log_path, echo=echo, header="prefdata build") as stream:
            self.console.file = stream
            try:
                yield
            finally:
                self.console.file = previous

    def print_interrupted(self) -> None:
        total = "?" if self.shards_total is None else str(self.shards_total)
        self.console.print(f"interrupted after {self.shards_done} of {total} shards; rerun the same command to resume",
                           markup=False, highlight=False, soft_wrap=True)

    def print_summary(self, stats: dict[str, Any], out_dir: Path) -> None:
        print_summary(self.console, stats, out_dir, self.log_path)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def print_summary(console: Console, stats: dict[str, Any], out_dir: Path, log_path: Path | None = None) -> None:
    """The end of a build on one screen: pairs and where, read rejects, each stage's rows in/out,
    drops by reason and seconds, what a resume re-used, the wall time, where the logs are."""
    out = stats["output"]
    console.print(f"[green]built[/] {out['rows']} pairs in {escape(str(out_dir))} "
                  f"({out['rejects']} rejects, {stats['seconds']['total']:.1f}s)", highlight=False, soft_wrap=True)
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column()
    source = stats["source"]
    grid.add_row("  read", f"{source['rows_read']} -> {source['rows_ok']} rows", "",
                 escape("rejects: " + _reasons(source["drops"])) if source["drops"] else "")
    for stage in stats["stages"]:
        grid.add_row(f"  {escape(stage['name'])}", f"{stage['rows_in']} -> {stage['rows_out']} rows",
                     f"{stage['seconds']:.1f}s", escape("drops: " + _reasons(stage["drops"])) if stage["drops"] else "")
    console.print(grid, highlight=False)
    notes = []
    resumed = stats.get("resumed") or {}
    if resumed.get("stages"):
        notes.append(f"resumed {resumed['shards']} of {out['shards']} shards ({resumed['stages']} stage runs re-used)")
    if stats["seconds"].get("engine_setup"):
        notes.append(f"engine setup {stats['seconds']['engine_setup']:.1f}s")
    if log_path is not None:
        notes.append(f"library logs: {escape(str(log_path))}")
    if notes:
        console.print("  " + "; ".join(notes), highlight=False, soft_wrap=True)
