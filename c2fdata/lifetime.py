"""How long a command's processes live: a terminated command cleans up as an interrupted one
does, and the worker processes it started do not outlive it.

- `terminate_as_interrupt()`: SIGTERM (`kill PID`, `timeout`, a batch scheduler's stop) raises
  KeyboardInterrupt in the command's main thread, so that what Ctrl-C runs runs too: pools
  stopped, the "re-run to resume" message printed. By default Python dies on SIGTERM on the spot,
  leaving its pool workers behind. (Not for torchrun's ranks, which must die of it at once: a
  rank waiting in a collective runs no Python code to raise in.)
- `end_with(pid)`: a worker process ends itself once the process it works for is gone. SIGKILL
  leaves no clean-up to run, and a forkserver's worker (whose parent is the forkserver, not the
  command) would otherwise wait forever on a pipe nobody reads any more.
"""

from __future__ import annotations

import os
import signal
import threading
import time

WATCH_EVERY_S = 1.0  # how often a worker looks for the process it works for


def terminate_as_interrupt() -> None:
    """SIGTERM -> KeyboardInterrupt in this process's main thread. A child forked later that
    inherits the handler dies of the signal as by default, as if it had never been installed."""
    owner = os.getpid()

    def on_terminate(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"terminated (signal {signum})")

    signal.signal(signal.SIGTERM, on_terminate)


def alive(pid: int) -> bool:
    """Whether process `pid` runs: neither gone nor a zombie (killed, and not yet reaped by its
    parent: a shell's `kill -9` leaves one until the shell waits for it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: there, and running
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # "pid (name) STATE ..."; the name may hold spaces
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) has said it is there
        return True


def end_with(pid: int, every_s: float = WATCH_EVERY_S) -> threading.Thread:
    """Exit this process (status 1, nothing flushed: its work is the other's to redo) within
    `every_s` seconds of process `pid` ending, from a daemon thread."""
    def watch() -> None:
        while alive(pid):
            time.sleep(every_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name=f"end-with-{pid}", daemon=True)
    thread.start()
    return thread
