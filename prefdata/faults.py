"""A test-only hook that kills the process at a named point, to prove a build survives `kill -9`.

`PREFDATA_KILL_AT="point"` or `"point:N"` makes the N-th (default first) pass through
`fault_point("point")` send SIGKILL to its own process: no cleanup handlers, no flushing, the
same as an out-of-memory kill or a preempted machine. Unset (always, outside tests) it is one
dictionary lookup. Points: `engine_chunk` (after an engine call's results are cached),
`parquet_write` (a Parquet file half written under its temporary name), `stage_done` (a stage's
checkpoint committed, the next stage not started), `fit_done` (a whole-input stage's fitted state
checkpointed, no shard applied yet), `shard_done` (a shard's output written).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_ENV = "PREFDATA_KILL_AT"
_hits: Counter = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
