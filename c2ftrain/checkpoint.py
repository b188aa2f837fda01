"""Checkpoints: written atomically, loadable with torch.load(weights_only=True), checked on load.

Only tensors and plain Python containers go in (no pickled classes, no numpy), so
`weights_only=True` loads them; a checkpoint is written to a temporary file in the same folder
and renamed over the old one, so a kill at any moment leaves the previous checkpoint intact.
torch.save writes a zip archive with a CRC-32 per entry, which torch.load does not check: a
flipped bit in a weight would load as another weight. Loading checks every entry's CRC first.
"""

from __future__ import annotations

import os
import zipfile
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


def _damaged_entry(path: Path) -> str | None:
    """The first entry of the archive whose CRC-32 does not match its bytes, or None. An entry
    recorded with CRC 0 is not checked: torch writes that when told not to compute them
    (torch.serialization.set_crc32_options(False))."""
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if entry.CRC == 0:
                continue
            try:
                with archive.open(entry) as f:  # zipfile checks the CRC once the entry is read to its end
                    while f.read(1 << 24):
                        pass
            except zipfile.BadZipFile as err:
                if "CRC" not in str(err):
                    raise
                return entry.filename
    return None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint's payload, on the CPU by default (RNG states must stay CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    what_now = ("restore it from a copy, or delete it (`c2ftrain run --resume` then trains that run again from "
                "its start)")
    with open(path, "rb") as f:
        zip_start = f.read(4) == b"PK\x03\x04"  # torch.save's, even cut short (a partial copy)
    if zip_start and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            other_zip = not any(n.endswith("/data.pkl") for n in z.namelist())  # torch.save writes NAME/data.pkl
    else:
        other_zip = False
    if other_zip or (path.suffix != ".pt" and not zip_start):  # another file (metrics.jsonl, eval --scores' .npz)
        raise ValueError(f"{path} is not a c2f checkpoint: those are final.pt and checkpoints/last.pt in a run's "
                         "directory (starting weights of AST or timm go in model.init)")
    try:
        damaged = _damaged_entry(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a c2f checkpoint (truncated, or not written by c2f?): {err}; "
                         f"{what_now}") from None
    if damaged is not None:
        raise ValueError(f"{path} is damaged: its entry {damaged} fails its CRC-32 (a changed byte on disk); "
                         f"{what_now}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # torch's unpickler errors ("Unsupported operand 110", "Please file an issue") say
        # nothing to a user; its first line is kept for whoever debugs it.
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a c2f checkpoint (corrupt or truncated?): {first}; {what_now}") from None
