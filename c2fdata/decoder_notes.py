"""What an audio decoder library writes to the process's stderr while it decodes one file.

libmpg123 (libsndfile's MP3 decoder) meets a damaged frame, writes "Illegal Audio-MPEG-Header
... Trying to resync... Skipped 540 bytes" straight to file descriptor 2, and decodes on: the
audio then has a gap that nothing else reports, and the words land between a build's progress
bars, naming no file. Captured per file, they become that clip's warning in the build's report.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

SHOWN = 3  # of what a decoder said about one file, the lines a report quotes
_SINK: tuple[int, int] | None = None  # (process id, file descriptor): this process's capture file, reused


@contextmanager
def decoder_notes() -> Iterator[list[str]]:
    """Within the block, what is written to file descriptor 2 is kept rather than shown; the list
    yielded holds its lines once the block ends (stripped, blank ones dropped). Lines holding a
    terminal escape sequence are left out: a progress bar redrawn by another thread of this
    process, not a decoder's words."""
    global _SINK
    if _SINK is None or _SINK[0] != os.getpid():  # a forked worker must not share its parent's file
        _SINK = (os.getpid(), _open_sink())
    sink = _SINK[1]
    said: list[str] = []
    sys.stderr.flush()
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    saved = os.dup(2)
    os.dup2(sink, 2)
    try:
        yield said
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        size = os.lseek(sink, 0, os.SEEK_CUR)
        os.lseek(sink, 0, os.SEEK_SET)
        text = os.read(sink, min(size, 1 << 16)).decode(errors="replace")  # a flood is cut, not kept whole
        said.extend(line.strip() for line in text.splitlines() if line.strip() and "\x1b[" not in line)


def quoted(said: list[str]) -> str:
    """What the decoder said, for a clip's or a file's report ("" if nothing)."""
    if not said:
        return ""
    more = f" / ... ({len(said)} lines)" if len(said) > SHOWN else ""
    return "; the decoder said: " + " / ".join(said[:SHOWN]) + more


def _open_sink() -> int:
    fd, path = tempfile.mkstemp(prefix="c2f-decoder-")
    os.unlink(path)  # gone with the process, whatever ends it
    return fd
