"""The rich console the command-line tools print with."""

from __future__ import annotations

import sys

from rich.console import Console

LOG_WIDTH = 160  # off a terminal rich assumes 80 columns and cuts tables: a log keeps them whole


def log_console(stderr: bool = False) -> Console:
    """A console at the terminal's width, or LOG_WIDTH wide when its stream is a file or pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)
