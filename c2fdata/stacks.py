"""Where a long job is stuck: every thread's Python stack, written to stderr on demand.

A GPU run that stops making progress (a compile that never ends, a pipeline waiting on its reader
processes, a collective waiting on a rank) shows nothing on its own. The command-line tools
therefore install Python's faulthandler at start:
- a crash in native code (SIGSEGV, SIGABRT, ... in DALI, CUDA, NCCL) prints the Python stacks
  that led to it before the process dies;
- `kill -USR1 PID` prints every thread's stack and the job goes on (py-spy dump without py-spy);
- `StallWatch` prints them when a job has reported no progress for a while (`bench throughput
  --stall-dump S`), from faulthandler's own C thread, so that it works even while the stuck
  thread holds the GIL inside native code.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from typing import Self, TextIO

DUMP_SIGNAL = signal.SIGUSR1


def _stream(file: TextIO | None) -> TextIO | None:
    """`file` (default stderr) if faulthandler can write to it, else None: a stream without a file
    descriptor (a test runner's capture) cannot take a dump written from a C signal handler."""
    file = sys.stderr if file is None else file
    try:
        file.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    return file


def install_stack_dumps(file: TextIO | None = None) -> bool:
    """Crash tracebacks and `kill -USR1` stack dumps into `file` (default stderr); False where the
    stream has no file descriptor (nothing installed). A handler someone else installed first for
    fatal signals (pytest's, say) is kept."""
    stream = _stream(file)
    if stream is None:
        return False
    if not faulthandler.is_enabled():
        faulthandler.enable(file=stream, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=stream, all_threads=True, chain=False)
    return True


class StallWatch:
    """Dumps every thread's stack to `file` once `seconds` pass without a call to `progress`,
    and again every `seconds` while it stays stuck; the job itself goes on. seconds <= 0: off.
    Use as a context manager; whoever calls `progress` should also log what comes next, so that
    the last line before a dump says what the job was doing."""

    def __init__(self, seconds: float, file: TextIO | None = None):
        if seconds < 0:
            raise ValueError(f"stall dump after {seconds} s: must be >= 0 (0: off)")
        self.seconds = seconds
        self.stream = _stream(file) if seconds > 0 else None

    def __enter__(self) -> Self:
        self._arm()
        return self

    def __exit__(self, *exc) -> None:
        if self.stream is not None:
            faulthandler.cancel_dump_traceback_later()

    def progress(self) -> None:
        """The job moved on: the clock starts again."""
        self._arm()

    def _arm(self) -> None:
        if self.stream is not None:  # replaces the pending one, if any
            faulthandler.dump_traceback_later(self.seconds, repeat=True, file=self.stream, exit=False)
