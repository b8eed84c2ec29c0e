"""Ctrl-C and SIGTERM during `prefdata build`: exit 130, one line, no traceback; the rerun resumes.

Each build runs in a subprocess in its own process group, as `test_resume.py` does. Ctrl-C is a
SIGINT to the whole foreground group (vLLM's engine-core process gets it too: the issue's ~130
lines of EngineDeadError tracebacks); `kill PID` or a job runner's SIGTERM reaches the main
process only. The signal is sent once the first stage checkpoint exists, with shards still to go.
The vLLM test also checks the console of the resumed build: no library logs, a few lines, and
the logs in OUT/.prefdata/build.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefdata.logs import BUILD_LOG_FILE
from prefdata.pipeline.checkpoint import CHECKPOINT_DIR

from ..conftest import FIXTURES, REPO

PAIRS_RECIPE = """
name = "interrupt"
[source]
path = "{source}"
kind = "pairs"
[engines.policy]
backend = "transformers"
dtype = "float32"
[[stages]]
type = "reference_logps"
[output]
shard_size = 1
"""

PROMPTS_RECIPE = """
name = "interrupt-vllm"
seed = 7
[source]
path = "{source}"
limit = 3
[engines.policy]
backend = "vllm"
dtype = "float32"
kv_cache_gib = 1
max_model_len = 512
[[stages]]
type = "on_policy"
n = 2
[stages.sampling]
temperature = 1.0
max_tokens = 16
[stages.scorer]
type = "judge"
system_prompt = "Rate 1 to 10."
template = "{{conversation}} {{response}}"
[output]
shard_size = 1
"""

LINE = re.compile(r"interrupted after (\d+) of (\d+) shards; rerun the same command to resume")


def start(recipe: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFDATA_KILL_AT", None)
    # importing TRL sets VLLM_LOGGING_LEVEL=ERROR in os.environ (trl/_compat.py); a test earlier in
    # this pytest process may have done so, and the build must log at vLLM's own default here
    env.pop("VLLM_LOGGING_LEVEL", None)
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "prefdata", "build", str(recipe), "-o", str(out)],
                            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the group may outlive the test
    return code, log.read_text()


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not list((out / CHECKPOINT_DIR).rglob("*.json")):
        assert proc.poll() is None, "the build ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def interrupt_then_resume(tmp: Path, recipe_text: str, source: Path, sig: int,
                          whole_group: bool) -> tuple[str, int, dict]:
    recipe = tmp / "recipe.toml"
    recipe.write_text(recipe_text.format(source=source))
    out = tmp / "out"
    proc = start(recipe, out, tmp / "interrupted.log")
    wait_for_checkpoint(proc, out)
    if whole_group:
        os.killpg(proc.pid, sig)  # Ctrl-C in a terminal
    else:
        os.kill(proc.pid, sig)
    code, text = finish(proc, tmp / "interrupted.log")
    assert code == 130, text[-3000:]
    match = LINE.fullmatch(text.rstrip("\n"))
    assert match, text[-3000:]  # exactly the one line: no traceback, no library log, no progress
    done, shards = int(match[1]), int(match[2])
    assert done < shards
    assert not (out / "stats.json").exists()  # the build is not finished
    assert len(list((out / "data").glob("train-*.parquet"))) >= done

    proc = start(recipe, out, tmp / "resumed.log")
    code, resumed = finish(proc, tmp / "resumed.log")
    assert code == 0, resumed[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["output"]["shards"] == shards
    assert stats["resumed"]["stages"] >= 1  # at least the checkpoint the signal waited for
    assert stats["resumed"]["shards"] >= done
    return resumed, done, stats


@pytest.mark.parametrize(("sig", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c", "sigterm"])
def test_interrupted_transformers_build_exits_130_with_one_line_and_resumes(tmp_path, sig, whole_group):
    _, _, stats = interrupt_then_resume(tmp_path, PAIRS_RECIPE, FIXTURES / "pairs_small.jsonl", sig, whole_group)
    assert stats["stages"][0]["rows_out"] == stats["source"]["rows_ok"] == stats["output"]["shards"]


@pytest.mark.vllm
def test_ctrl_c_on_a_vllm_build_is_one_line_and_the_rerun_console_is_quiet(tmp_path):
    resumed, _, stats = interrupt_then_resume(tmp_path, PROMPTS_RECIPE, FIXTURES / "prompts_small.jsonl",
                                              signal.SIGINT, whole_group=True)
    assert stats["output"]["shards"] == 3
    assert stats["engines"]["policy"]["backend"] == "vllm"
    lines = resumed.splitlines()
    assert lines[0].startswith(f"built {stats['output']['rows']} pairs in ")
    assert len(lines) < 25, resumed
    for noise in ("INFO", "WARNING", "Traceback", "EngineDeadError", "it/s]"):
        assert noise not in resumed, resumed
    log = (tmp_path / "out" / BUILD_LOG_FILE).read_text()
    assert log.count("=== prefdata build") == 2  # the interrupted run's and the rerun's
    # vLLM's logs are here (its engine core runs in prefdata's process on CPU: "(MainProcess pid=..) INFO")
    assert re.search(r"^(\((EngineCore|MainProcess)\S* pid=\d+\) )?INFO ", log, re.MULTILINE), log[-3000:]
