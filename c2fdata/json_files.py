"""JSON files that are written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, payload: dict) -> None:
    """Written whole or not at all: a process stopped mid-write (a SIGTERM, a time limit) leaves
    the previous file (or none), never a truncated one that a resume or a reader would then fail
    to read."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
