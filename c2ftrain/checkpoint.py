"""Checkpoints: written atomically, loadable with torch.load(weights_only=True).

Only tensors and plain Python containers go in (no pickled classes, no numpy), so
`weights_only=True` loads them; a checkpoint is written to a temporary file in the same folder
and renamed over the old one, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint's payload, on the CPU by default (RNG states must stay CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # torch's unpickler errors ("Unsupported operand 110", "Please file an issue") say
        # nothing to a user; its first line is kept for whoever debugs it.
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a c2f checkpoint (corrupt or truncated?): {first}") from None
