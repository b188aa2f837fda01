"""One process at a time trains into a run directory.

A second `c2ftrain run --resume DIR` (or a second sweep or cross-validation into the same
directory) while the first still runs would resume from the same checkpoint and interleave both
processes' checkpoints, metrics.jsonl lines and reports. A directory is therefore held with an
advisory POSIX record lock (`lockf`) on DIR/.c2f-lock for as long as a command works in it. The
kernel drops it when the process ends, however it ends (SIGKILL too), and, unlike `flock`, a
forked child (a DataLoader worker) does not inherit it, so a killed run's workers do not hold
the directory after it. (The price of POSIX locks: the holder must not open and close the lock
file elsewhere, which would drop the lock; nothing does.) The file's text (command, pid, host,
start) only names the holder in the error. Under torchrun rank 0 holds it for all ranks. Where
the file system offers no locks (some network mounts), a warning is logged and the run goes on
unguarded.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on unguarded
    fcntl = None

LOCK_FILE = ".c2f-lock"
log = logging.getLogger(__name__)
_HELD: set[Path] = set()  # run directories this process holds: a POSIX lock taken twice is dropped by either release


class RunDirectoryBusy(ValueError):
    """Another process works in the run directory."""


@contextmanager
def hold_run_dir(run_dir: Path, command: str = "c2ftrain") -> Iterator[None]:
    """Hold `run_dir` (made if missing) for the duration; RunDirectoryBusy, naming the holder,
    when another process holds it. `command` is what this process is, for another's error."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    key = run_dir.resolve()
    if key in _HELD:  # lockf would grant it again, and the inner release would free the outer hold
        raise RunDirectoryBusy(f"{run_dir} is already in use by this process ({command}): a run directory inside "
                               "itself (a sweep cell named '.' or '..'?)")
    _HELD.add(key)
    try:
        with _locked(run_dir, command):
            yield
    finally:
        _HELD.discard(key)


@contextmanager
def _locked(run_dir: Path, command: str) -> Iterator[None]:
    with open(run_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):  # ENOLCK and the like: a file system without locks
                log.warning("%s: cannot lock (%s); nothing stops a second process from using it at once", run_dir, err)
                yield
                return
            f.seek(0)
            holder = f.read().strip() or "a process that has not said which"
            raise RunDirectoryBusy(
                f"{run_dir} is in use by another process ({holder}): two processes training into one directory "
                "would interleave their checkpoints, metrics and reports. Let it finish, or stop it and run the "
                "command again (finished work is kept)") from None
        f.seek(0)
        f.truncate()
        f.write(f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
