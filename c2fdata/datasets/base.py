"""What every dataset adapter returns: clips (id, split, labels, where the audio comes from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from c2fdata.features import BadClip
from c2fdata.vocab import Vocabulary

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class AudioSource(Protocol):
    """A picklable callable giving (audio (samples,) or (samples, channels), sample rate)."""

    def __call__(self) -> tuple[np.ndarray, int]: ...


@dataclass(frozen=True)
class FileSource:
    path: str

    def __call__(self) -> tuple[np.ndarray, int]:
        import soundfile as sf

        try:
            audio, sr = sf.read(self.path, dtype="float32", always_2d=False)
        except FileNotFoundError:
            raise BadClip("missing", f"{self.path}: file not found") from None
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError
            raise BadClip("unreadable", f"{self.path}: {err}") from None
        return audio, int(sr)

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Clip:
    id: str  # unique within the dataset, e.g. "YTID_30.000" or "fold1/1-100032-A-0"
    split: str
    labels: tuple[str, ...]  # label ids or names as the metadata gives them
    source: AudioSource


@dataclass
class DatasetSpec:
    """A dataset as an adapter found it on disk, before any audio is decoded."""

    name: str
    vocabulary: Vocabulary
    multi_label: bool
    target_frames: int  # frames stored per clip (longer clips cropped, shorter zero-padded)
    clips: dict[str, list[Clip]]  # split -> clips in a stable order
    train_split: str = "train"  # the split the normalisation statistics come from
    # Listed in the metadata but not on disk: split -> ids. Counted, reported, never fatal.
    missing: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.target_frames <= 0:
            raise ValueError(f"target_frames must be positive, got {self.target_frames}")
        if not any(self.clips.values()):
            raise ValueError(
                f"dataset {self.name!r}: no clips found (missing on disk: "
                f"{sum(map(len, self.missing.values()))}); check --root and the layout in README"
            )
        if self.train_split not in self.clips:
            raise ValueError(f"dataset {self.name!r} has no split {self.train_split!r}")
        for split, clips in self.clips.items():
            ids = [c.id for c in clips]
            if len(set(ids)) != len(ids):
                raise ValueError(f"dataset {self.name!r}, split {split!r}: duplicate clip ids")


def find_audio(folder: Path, stem: str) -> Path | None:
    """First file `stem.<audio ext>` in folder, or None."""
    for ext in AUDIO_EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def index_audio(root: Path) -> dict[str, Path]:
    """stem -> path for every audio file under root (recursive); one scan instead of N stats."""
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
            found.setdefault(p.stem, p)
    return found
