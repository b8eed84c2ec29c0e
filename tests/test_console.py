"""The build console: progress bookkeeping, the summary, library output captured to a log.

The bookkeeping is driven by scripted events (a fake clock; orchestration logic) and by a real
build on the transformers engine, whose rows done must advance inside its one shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys

from rich.console import Console

from prefdata.builder import run_build
from prefdata.console import BuildConsole, BuildProgressModel, print_summary
from prefdata.logs import capture_output

from .conftest import FIXTURES


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rows_advance_per_engine_chunk_never_back_and_totals_project():
    clock = Clock()
    model = BuildProgressModel(clock=clock)
    model.begin(["on_policy", "reference_logps"], [4, 4])
    assert model.rows(0) == (0, 8, True) and model.rows(1) == (0, None, False)
    model.stage_started(0, 0, 4)
    model.engine_chunk("generate", 2, 4)  # half the first call's requests: half the shard's rows
    assert model.rows(0)[0] == 2
    model.engine_chunk("generate", 4, 4)
    assert model.rows(0)[0] == 3  # a shard counts as done only when the stage finishes it
    model.engine_chunk("score", 4, 8)  # a second call: the share drops to 8/12, the count stays
    assert model.rows(0)[0] == 3
    clock.now = 10.0
    model.stage_started(1, 0, 3)  # on_policy kept 3 of 4 rows: stage 1's total is projected
    assert model.rows(1) == (0, 6, False)
    clock.now = 12.0
    model.shard_done(0, [(4, 3), (3, 3)], resumed_stages=0)
    assert model.rows(0) == (4, 8, True) and model.rows(1) == (3, 6, False)
    assert model.shards_done == 1
    # shard 1: the requests per row of shard 0 (12 for 4 rows) set the share from the first chunk on
    model.stage_started(0, 1, 4)
    model.engine_chunk("generate", 4, 4)
    assert model.stages[0].share() == 4 / 12
    assert model.rows(0)[0] == 4 + 1
    clock.now = 15.0
    # ETA: 10 s for 4 rows, then 3 s for 4/12 of 4 rows -> 13 s / 5.33 rows; 2.67 rows left
    assert abs(model.stages[0].eta(model.input_rows, clock.now) - (8 - 4 - 4 / 3) * 13 / (4 + 4 / 3)) < 1e-9


def test_resumed_shards_count_as_done_but_not_in_the_eta():
    clock = Clock()
    model = BuildProgressModel(clock=clock)
    model.begin(["a"], [2, 2])
    model.shard_done(0, [(2, 2)], resumed_stages=1)  # from checkpoints: no stage ran
    assert model.rows(0) == (2, 4, True)
    assert model.stages[0].eta(model.input_rows, clock.now) is None  # no rate measured yet
    model.stage_started(0, 1, 2)
    clock.now = 4.0
    model.engine_chunk("generate", 1, 2)
    assert model.stages[0].eta(model.input_rows, clock.now) == 4.0  # 1 row in 4 s, 1 row left


def test_rows_done_advance_inside_a_single_shard_of_a_real_build(tmp_path, hf_engine):
    """40 pairs in one shard through `reference_logps`: 80 score requests in one engine call, whose
    batches the engine reports as they finish, so the stage's rows done move while the shard runs."""
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": "No."}) + "\n"
                              for i in range(40)))
    seen: list[tuple[str, int, int]] = []

    class Recorder(BuildProgressModel):
        def engine_chunk(self, operation, done, total):
            super().engine_chunk(operation, done, total)
            seen.append(("chunk", self.rows(0)[0], self.shards_done))

        def shard_done(self, shard, counts, resumed_stages):
            super().shard_done(shard, counts, resumed_stages)
            seen.append(("shard", self.rows(0)[0], self.shards_done))

    recipe = {"name": "progress", "source": {"path": str(source), "kind": "pairs"},
              "engines": {"policy": {"backend": "transformers", "dtype": "float32"}},
              "stages": [{"type": "reference_logps"}], "output": {"dir": str(tmp_path / "out"), "shard_size": 64}}
    recorder = Recorder()
    run_build(recipe, engines={"policy": hf_engine}, progress=recorder, cache=False)
    *inside, last = seen
    rows = [r for _, r, _ in inside]
    assert {kind for kind, _, _ in inside} == {"chunk"} and {shards for _, _, shards in inside} == {0}
    assert rows == sorted(rows) and len(set(r for r in rows if r < 40)) >= 2  # moved more than once, never back
    assert last == ("shard", 40, 1)


def _stats(name: str = "on_policy") -> dict:
    return {"output": {"rows": 3, "rejects": 2, "shards": 1},
            "seconds": {"total": 12.5, "engine_setup": 4.0},
            "source": {"rows_read": 5, "rows_ok": 4, "drops": {"[invalid_json]": 1}},
            "stages": [{"name": name, "rows_in": 4, "rows_out": 3, "drops": {"all_tied": 1}, "seconds": 7.31}],
            "resumed": {"shards": 0, "stages": 0}}


def test_summary_shows_read_rejects_stage_drops_and_brackets_literally(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=200)
    print_summary(console, _stats("[bold]stage[/bold]"), tmp_path / "[push]", tmp_path / "build.log")
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == f"built 3 pairs in {tmp_path / '[push]'} (2 rejects, 12.5s)"
    assert "5 -> 4 rows" in lines[1] and "rejects: [invalid_json] 1" in lines[1]
    assert "[bold]stage[/bold]" in lines[2] and "4 -> 3 rows" in lines[2] and "7.3s" in lines[2]
    assert "drops: all_tied 1" in lines[2]
    assert f"library logs: {tmp_path / 'build.log'}" in lines[3]
    assert len(lines) == 4


def test_interrupt_line_counts_finished_shards():
    out = io.StringIO()
    view = BuildConsole(Console(file=out, width=200), quiet=True)
    view.begin(["a"], [1, 1, 1])
    view.shard_done(0, [(1, 1)], 0)
    view.print_interrupted()
    assert out.getvalue() == "interrupted after 1 of 3 shards; rerun the same command to resume\n"


def test_capture_sends_fds_python_streams_children_and_warnings_to_the_log(tmp_path, capfd):
    log = tmp_path / "state" / "build.log"
    with capture_output(log, header="test") as console:
        os.write(1, b"fd one\n")
        os.write(2, b"fd two\n")
        print("python stdout")
        print("python stderr", file=sys.stderr)
        handler = logging.StreamHandler()  # as a library configures its logging on import: bound to sys.stderr
        logging.getLogger("prefdata-test-library").addHandler(handler)
        logging.getLogger("prefdata-test-library").warning("a library log line")
        logging.getLogger("prefdata-test-library").removeHandler(handler)
        subprocess.run([sys.executable, "-c", "import sys, warnings; print('child out'); print('child err', file=sys.stderr); "
                        "warnings.warn('a library warning')"], check=True)
        console.write("for the user\n")
    captured = capfd.readouterr()
    text = log.read_text()
    for line in ("fd one", "fd two", "python stdout", "python stderr", "a library log line", "child out", "child err",
                 "a library warning"):
        assert line in text
        assert line not in captured.out + captured.err
    assert "for the user" in captured.err and "for the user" not in text
    assert text.startswith("=== test ")
    print("after")  # descriptors restored
    assert capfd.readouterr().out == "after\n"


def test_capture_with_echo_tees_each_line(tmp_path, capfd):
    shown: list[str] = []
    log = tmp_path / "build.log"
    with capture_output(log, echo=shown.append):
        os.write(2, b"engine INFO line\n")
        subprocess.run([sys.executable, "-c", "print('child line')"], check=True)
    assert shown == ["engine INFO line", "child line"]
    assert "engine INFO line" in log.read_text() and "child line" in log.read_text()
    assert "engine INFO line" not in capfd.readouterr().err


def test_progress_display_escapes_stage_names():
    view = BuildConsole(Console(file=io.StringIO(), width=200), quiet=False)
    view.begin(["[red]x[/red]"], [2])
    view.stage_started(0, 0, 2)
    view.engine_chunk("generate", 1, 2)
    out = io.StringIO()
    Console(file=out, width=200).print(view.display.make_tasks_table(view.display.tasks))
    rendered = out.getvalue()
    assert "[red]x[/red]" in rendered and "1/2 rows" in rendered and "generate 1/2" in rendered


def test_a_crash_names_the_build_log_and_keeps_its_exception(tmp_path):
    import pytest

    out = io.StringIO()
    view = BuildConsole(Console(file=out, width=300), quiet=True)
    view.log_path = tmp_path / ".prefdata" / "build.log"
    with pytest.raises(RuntimeError, match="engine died"), view.running():
        raise RuntimeError("engine died")
    assert out.getvalue() == f"the engines' logs are in {view.log_path}\n"


def _progress_lines(view: BuildConsole) -> dict[str, str]:
    """The live display's rows as a terminal shows them, by task name."""
    out = io.StringIO()
    Console(file=out, width=200).print(view.display.make_tasks_table(view.display.tasks))
    return {line.split()[0]: line for line in out.getvalue().splitlines() if line.strip()}


def test_a_projected_total_shows_a_tilde_and_an_exact_one_does_not():
    """README: rows done / total, `~` marking a total projected from the shards seen so far."""
    view = BuildConsole(Console(file=io.StringIO(), width=200), quiet=False)
    view.begin(["on_policy", "reference_logps"], [4, 4])
    view.stage_started(0, 0, 4)
    view.stage_started(1, 0, 3)  # on_policy kept 3 of shard 0's 4 rows: 6 of 8 projected for stage 1
    lines = _progress_lines(view)
    assert "0/8 rows" in lines["on_policy"] and "~" not in lines["on_policy"]  # the input's rows: exact
    assert "0/~6 rows" in lines["reference_logps"]
    view.shard_done(0, [(4, 3), (3, 3)], resumed_stages=0)
    view.stage_started(0, 1, 4)
    view.stage_started(1, 1, 2)  # every shard seen: 3 + 2 rows, no longer a projection
    lines = _progress_lines(view)
    assert "3/5 rows" in lines["reference_logps"] and "~" not in lines["reference_logps"]


def _dedup_recipe(tmp_path):
    """A build without engines whose one stage checkpoints: a rerun re-uses every stage run."""
    recipe = tmp_path / "dedup.yaml"
    recipe.write_text(f"name: dedup\nsource: {{path: '{FIXTURES / 'pairs_small.jsonl'}', kind: pairs}}\n"
                      "stages: [{type: dedup, near_threshold: null}]\noutput: {shard_size: 5}\n")
    return recipe


def test_a_whole_input_stage_moves_its_rows_shard_by_shard_fresh_and_resumed(tmp_path):
    """A recipe with a whole-input stage runs stage by stage over all shards (its barrier): each
    shard's score phase counts as done when it finishes, and a resumed build counts the checkpointed
    stages, so the line ends at rows in / total either way (it used to stay at 0/11)."""
    seen: list[int] = []

    class Recorder(BuildProgressModel):
        def stage_done(self, position, shard, rows_in, resumed):
            super().stage_done(position, shard, rows_in, resumed)
            seen.append(self.rows(0)[0])

    recipe = _dedup_recipe(tmp_path)
    for run in ("fresh", "resumed"):
        seen.clear()
        recorder = Recorder()
        run_build(recipe, output=tmp_path / "out", progress=recorder, on_shard=recorder.on_shard)  # as the CLI wires it
        assert seen == [5, 10, 11], run  # 11 rows in shards of 5, 5, 1
        assert recorder.rows(0) == (11, 11, True) and recorder.shards_done == 3, run
    assert recorder.stages[0].live_rows == 0  # the resumed run re-used every shard: none counts for the ETA


def test_the_summary_says_what_a_resume_re_used(tmp_path):
    from typer.testing import CliRunner

    from prefdata.cli import app

    recipe, out = _dedup_recipe(tmp_path), tmp_path / "out"
    first = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out), "-q"])
    assert first.exit_code == 0, first.output
    assert "resumed" not in first.output  # nothing to re-use on a fresh build
    again = CliRunner().invoke(app, ["build", str(recipe), "-o", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "stats.json").read_text())["resumed"] == {"shards": 3, "stages": 3}
    assert "resumed 3 of 3 shards (3 stage runs re-used)" in again.output


def test_quiet_hides_the_progress_lines(tmp_path, monkeypatch, capfd):
    """On a terminal `prefdata build` shows a line per stage (`11/11 rows`); `-q` shows none, the
    summary still prints."""
    from typer.testing import CliRunner

    import prefdata.cli

    recipe = _dedup_recipe(tmp_path)
    shown = {}
    for flags in ((), ("-q",)):
        terminal = io.StringIO()
        monkeypatch.setattr(prefdata.cli, "console", Console(file=terminal, force_terminal=True, width=200))
        result = CliRunner().invoke(prefdata.cli.app, ["build", str(recipe), "-o", str(tmp_path / f"out{len(flags)}"),
                                                       *flags])
        assert result.exit_code == 0, result.output
        shown[flags] = terminal.getvalue() + capfd.readouterr().err  # the display may draw while output is captured
    progress = re.compile(r"\b\d+/~?\d+ rows")
    assert progress.search(shown[()]) and "dedup" in shown[()]
    assert not progress.search(shown[("-q",)]) and "11 -> 11 rows" in shown[("-q",)]  # the summary, not progress
