"""Ctrl-C and SIGTERM during a build: stop at once, start nothing new, let the engines shut down.

`interruptible()` installs handlers for SIGINT and SIGTERM in the main thread. The first signal
raises `BuildInterrupted` wherever the build is (a `BaseException`, so library code that catches
`Exception` does not swallow it); `finally` blocks then close the engines and the request cache,
and what was committed (stage checkpoints, cached engine chunks, written shards) stays for the
rerun. Repeats are ignored while that shutdown runs. Ctrl-C also reaches vLLM's engine-core
process (same process group), which then dies and makes the parent raise vLLM's own errors
(EngineDeadError); `stop.signal` tells the caller that any exception after it is the interrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


class BuildInterrupted(BaseException):
    """The build was stopped by a signal."""


@dataclass
class Stop:
    signal: int | None = None  # the first signal received, None while running


@contextlib.contextmanager
def interruptible() -> Iterator[Stop]:
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.signal is not None:
            return  # already stopping
        stop.signal = signum
        raise BuildInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
