"""Library output goes to a file: everything written to file descriptors 1 and 2 during a build.

Engines print from places Python's `logging` does not reach: vLLM's engine-core child process
(it inherits the parent's stdout/stderr), C++ extensions, tqdm bars, `warnings`. So
`capture_output` redirects the descriptors themselves (`dup2`) to `OUT/.prefdata/build.log`
(appended, one header line per build), and children started meanwhile inherit the redirection.
The console keeps writing to the original stderr through a duplicate of it. With `echo` (the
CLI's `-v`), the descriptors point at a pipe instead and a thread copies each line to the log
and to `echo`.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from prefdata.pipeline.checkpoint import STATE_DIR

BUILD_LOG_FILE = f"{STATE_DIR}/build.log"


def _is_fd(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _tee(read_fd: int, log: io.BufferedWriter, echo: Callable[[str], None]) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            log.write(line)
            log.flush()
            text = line.decode("utf-8", errors="replace").rstrip("\n").rsplit("\r", 1)[-1]
            with contextlib.suppress(Exception):  # the console must never break the build
                echo(text)


@contextlib.contextmanager
def capture_output(log_path: str | Path, echo: Callable[[str], None] | None = None,
                   header: str | None = None) -> Iterator[TextIO]:
    """Redirect this process's fds 1 and 2 (and `sys.stdout`/`sys.stderr`) to `log_path` while the
    block runs; yields the stream the console writes to (the original stderr)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - closed in the finally below, after the tee thread
    log.write(f"{chr(10) if log.tell() else ''}=== {header or 'prefdata'} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
    log.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    old_out, old_err = sys.stdout, sys.stderr
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    if _is_fd(old_err, 2):  # the real stderr: keep a duplicate the redirection does not touch
        console: TextIO = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(old_err, "encoding", None) or "utf-8",
                                    errors="replace")
    else:  # already a Python object (a test runner's capture): write to it as it is
        console = old_err
    thread, write_fd = None, log.fileno()
    if echo is not None:
        read_fd, write_fd = os.pipe()
        thread = threading.Thread(target=_tee, args=(read_fd, log, echo), name="prefdata-log-tee", daemon=True)
        thread.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    # Python-level writers get streams on the redirected descriptors; never closed, since logging
    # handlers created meanwhile keep a reference to them.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    try:
        yield console
    finally:
        blocked = _block_signals()  # a Ctrl-C now must not leave the descriptors redirected
        try:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = old_out, old_err
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if thread is not None:
                os.close(write_fd)  # children that outlive the block keep their own copy
                thread.join(timeout=5)
            if thread is None or not thread.is_alive():
                log.close()
            if console is not old_err:
                with contextlib.suppress(Exception):
                    console.close()
        finally:
            _unblock_signals(blocked)


def _block_signals() -> set[int]:
    wanted = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        return set()
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, wanted)) | {-1}


def _unblock_signals(previous: set[int]) -> None:
    if previous:
        wanted = {signal.SIGINT, signal.SIGTERM} - previous
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
